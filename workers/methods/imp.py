"""`imp`: iterative magnitude pruning with rewinding, as the paper defines it.

Global L1 magnitude pruning of `rate` of the surviving conv weights per
round; every round after the first rewinds to the state after
`rewind_epoch` epochs of round 0. Round 0 is the dense baseline.
"""
from .base import Method, register

METHOD = register(Method("imp"))
