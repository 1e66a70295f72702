"""`full_conv`: IMP on full convolutions: every k x k conv padded by k - 1,
shortcuts padded to match (workers/models/variants.py)."""
from .base import Method, register

METHOD = register(Method("full_conv", variant="full_conv"))
