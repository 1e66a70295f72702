"""Methods: what a trial's `method` means, one file per name.

Each file registers one `Method` (base.py), which says exactly what it
changes relative to IMP, so each name demonstrably is what it says. Adding a
method is one file plus its import line below.
"""
from .base import (METHODS, FromParent, Method, ParentMissing, RoundStart, get_method, parent_spec, register,
                   trial_model)

# Each module registers its method (in this order: the report lists them so).
from . import imp  # noqa: F401
from . import random_prune  # noqa: F401
from . import cosine_loss  # noqa: F401
from . import tvmf_loss  # noqa: F401
from . import full_conv  # noqa: F401
from . import harmonic  # noqa: F401
from . import same_layer_sparse  # noqa: F401
from . import small_dense  # noqa: F401

__all__ = ["METHODS", "FromParent", "Method", "ParentMissing", "RoundStart", "get_method", "parent_spec",
           "register", "trial_model"]
