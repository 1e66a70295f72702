"""`tvmf_loss`: IMP with a t-vMF similarity head (kappa 16, learned scale),
trained with cross-entropy on its output (workers/losses.py `TvMFHead`)."""
from .base import Method, register

METHOD = register(Method("tvmf_loss", head="tvmf", loss="tvmf"))
