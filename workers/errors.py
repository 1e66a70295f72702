"""The storage errors, apart from the store that raises most of them, so that
workers/retry.py (which wraps the store's filesystem) and workers/store.py
import this module and not each other. Import them from workers.store."""


class StorageError(Exception):
    """A user-facing storage problem (bad URI, unwritable path...)."""


class CorruptRound(Exception):
    """A committed round whose files do not match its manifest."""


class TakenOver(Exception):
    """A newer attempt of the same lineage owns it now; this one must stop."""
