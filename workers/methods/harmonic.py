"""`harmonic`: IMP on harmonic blocks: each 3x3 conv becomes a fixed DCT basis
(a buffer, never pruned) mixed by learned 1x1 convs, which IMP prunes."""
from .base import Method, register

METHOD = register(Method("harmonic", variant="harmonic"))
