"""Calculator registry: names to calculator classes, built-ins and plugins alike.

Calculators are discovered through the ``ovms_graph.calculators`` entry-point group; the built-in
ones are registered there by this project's own pyproject.toml, exactly as a third-party package
would. Entry points are imported lazily, so a broken plugin only matters to a graph that uses it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from google.protobuf.message import Message

from ovms_graph.calculator import Calculator
from ovms_graph.errors import RegistryError

ENTRY_POINT_GROUP = "ovms_graph.calculators"


@dataclass(frozen=True)
class _Lazy:
    name: str
    value: str  # "module:attr"
    origin: str  # distribution name, for messages


class Registry:
    """A set of calculators by name. Tests make their own; the server uses ``from_entry_points``."""

    def __init__(self) -> None:
        self._classes: dict[str, type[Calculator]] = {}
        self._origins: dict[str, str] = {}
        self._lazy: dict[str, _Lazy] = {}
        self._conflicts: dict[str, list[str]] = {}
        self._broken: dict[str, str] = {}

    @classmethod
    def from_entry_points(cls, group: str = ENTRY_POINT_GROUP) -> Registry:
        """Every calculator installed in ``group``; nothing is imported yet."""
        registry = cls()
        # Walk distributions rather than entry_points(), which silently keeps only the first of two
        # entry points with one name: a conflict must be reported, not resolved by sys.path order.
        seen: set[tuple[str, str, str]] = set()
        for dist in metadata.distributions():
            dist_name = dist.metadata["Name"] or "?"
            for ep in dist.entry_points:
                if ep.group != group or (dist_name, ep.name, ep.value) in seen:
                    continue
                seen.add((dist_name, ep.name, ep.value))
                lazy = _Lazy(ep.name, ep.value, f"{ep.value} (from {dist_name})")
                previous = registry._lazy.get(ep.name)
                if previous is not None and previous.value != ep.value:
                    registry._conflicts.setdefault(ep.name, [previous.origin]).append(lazy.origin)
                    continue
                registry._lazy[ep.name] = lazy
        return registry

    def register(self, calculator: type[Calculator], *, origin: str | None = None) -> type[Calculator]:
        """Add ``calculator``; a second class under the same name is an error naming both modules."""
        name = calculator.registry_name()
        where = origin or f"{calculator.__module__}.{calculator.__qualname__}"
        existing = self._classes.get(name)
        if existing is not None and existing is not calculator:
            raise RegistryError(
                f'calculator "{name}" is registered twice: by {self._origins[name]} and by {where}'
            )
        self._classes[name] = calculator
        self._origins[name] = where
        return calculator

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted({*self._classes, *self._lazy, *self._conflicts})

    def get(self, name: str) -> type[Calculator]:
        """The calculator called ``name``, importing its plugin if needed.

        Raises RegistryError for unknown names (listing the closest ones), duplicate plugins and
        plugins that fail to import.
        """
        if name in self._classes:
            return self._classes[name]
        if name in self._conflicts:
            raise RegistryError(
                f'calculator "{name}" is registered twice: by ' + " and by ".join(self._conflicts[name])
            )
        if name in self._broken:
            raise RegistryError(self._broken[name])
        lazy = self._lazy.get(name)
        if lazy is None:
            raise RegistryError(self.unknown_message(name))
        try:
            loaded: Any = metadata.EntryPoint(lazy.name, lazy.value, ENTRY_POINT_GROUP).load()
        except Exception as exc:  # any import failure of a plugin is reported, never raised raw
            self._broken[name] = (
                f'calculator "{name}" could not be imported from {lazy.origin}: {type(exc).__name__}: {exc}'
            )
            raise RegistryError(self._broken[name]) from exc
        if not (isinstance(loaded, type) and issubclass(loaded, Calculator)):
            self._broken[name] = f'calculator "{name}" from {lazy.origin} is not a Calculator subclass'
            raise RegistryError(self._broken[name])
        self._classes[name] = loaded
        self._origins[name] = lazy.origin
        return loaded

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self.names(), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        known = ", ".join(self.names()) or "none"
        return f'unknown calculator "{name}"{hint} (registered: {known})'

    def option_types(self, names: list[str] | None = None) -> list[type[Message]]:
        """Option message types of the named calculators (all importable ones when None)."""
        types: list[type[Message]] = []
        for name in names if names is not None else self.names():
            try:
                calc = self.get(name)
            except RegistryError:
                continue
            types.extend(t for t in calc.options_types if t not in types)
        return types
