"""A small name -> object registry: one module-level instance per kind of thing.

``horizon.benchmarks`` keeps two: the benchmarks (``--format``) and their
scorings (``--metric``). A module adds its object once, when it is imported::

    BENCHMARKS.register("pope", Pope())

    @METRICS.register("exact")
    class ...  # or any object: register(name) is also a decorator

``get(name)`` answers a one-line :class:`~horizon.errors.HorizonError` that
lists what exists, so a typo on the command line names the choices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

from .errors import HorizonError

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """Objects of one kind by name, in registration order.

    ``kind`` names the kind in messages ("format", "metric"); ``flag`` is the
    command-line option that chooses one (``--format``), if any.
    """

    def __init__(self, kind: str, flag: str | None = None) -> None:
        self.kind = kind
        self.flag = flag
        self._items: dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, item: T) -> T: ...

    def register(self, name: str, item: T | None = None) -> T | Callable[[T], T]:
        """Add ``item`` as ``name``; without ``item``, a decorator that adds what it decorates.

        Registering a second, different object under a taken name is a
        programming error (``ValueError``): names are how results are labelled.
        """
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(f"{self.kind} name must be a non-empty string without surrounding space, got {name!r}")

        def add(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered ({self._items[name]!r})")
            self._items[name] = obj
            return obj

        return add if item is None else add(item)

    def get(self, name: str) -> T:
        """The object registered as ``name``; a one-line HorizonError listing the names otherwise."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            label = f"{self.flag} {name!r}" if self.flag else f"{self.kind} {name!r}"
            known = ", ".join(self._items) or "none registered"
            raise HorizonError(f"{label}: unknown {self.kind}; use one of {known}") from None

    def names(self) -> tuple[str, ...]:
        """Registered names, in registration order."""
        return tuple(self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items.values()))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._items)})"
