"""Methods: what a trial's `method` means, one file per name.

Each file registers one `Method` (base.py), which says exactly what it
changes relative to IMP, so each name demonstrably is what it says. Adding a
method is one file plus its import line below.
"""
from .base import (METHODS, FromParent, Method, ParentMissing, RoundStart, get_method, parent_spec, register,
                   trial_model)

from . import imp  # noqa: E402,F401  (each module registers its method)
from . import random_prune  # noqa: E402,F401
from . import cosine_loss  # noqa: E402,F401
from . import tvmf_loss  # noqa: E402,F401
from . import full_conv  # noqa: E402,F401
from . import harmonic  # noqa: E402,F401
from . import same_layer_sparse  # noqa: E402,F401
from . import small_dense  # noqa: E402,F401

__all__ = ["METHODS", "FromParent", "Method", "ParentMissing", "RoundStart", "get_method", "parent_spec",
           "register", "trial_model"]
