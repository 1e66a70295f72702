"""`cosine_loss`: IMP trained with Barz & Denzler's cosine loss against one-hot
targets plus 0.1 x cross-entropy (workers/losses.py `cosine_loss`)."""
from .base import Method, register

METHOD = register(Method("cosine_loss", loss="cosine"))
