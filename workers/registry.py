"""One way to register anything the yaml can name: methods, architectures,
datasets, evaluations, losses, variants, trackers.

    METHODS = Registry("method")
    METHODS.register("imp", Imp())           # or @METHODS.register("imp") on a class or function
    METHODS.get("imp")                        # the entry
    METHODS.get("nope")                       # UnknownName: unknown method 'nope'; known: imp, ...

A registry is a read-only mapping in registration order (iterating it, `in`,
`len`, `items()` work as on a dict), so listings and the yaml checks that
read `choices` from it stay in step with what is registered. A name is
registered once: a second entry under the same name is a bug (two files
claiming one yaml value), not an override.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")
_MISSING = object()


class UnknownName(LookupError):
    """A name no entry was registered under; its message is one line naming the known ones."""


class Registry(Mapping, Generic[T]):
    def __init__(self, kind: str, error: type[Exception] = UnknownName):
        self.kind = kind
        self.error = error  # a package may raise its own user-facing error type (data: DataError)
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry=_MISSING):
        """register(name, entry) -> entry; register(name) -> a decorator that registers what it wraps."""
        if entry is _MISSING:
            def wrap(obj):
                self.register(name, obj)
                return obj
            return wrap
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str, default=_MISSING) -> T:
        """The entry registered as `name`; without a default, an unknown name raises
        the registry's error with the one-line "unknown <kind> ...; known: ..." message."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            if default is not _MISSING:
                return default
            raise self.error(self.unknown(name)) from None

    def unknown(self, name) -> str:
        return f"unknown {self.kind} {name!r}; known: {', '.join(self._entries) or '(none)'}"

    def where(self, pred: Callable[[T], bool]) -> list[str]:
        """The names whose entries satisfy `pred`, in registration order."""
        return [n for n, e in self._entries.items() if pred(e)]

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name) -> bool:
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"

