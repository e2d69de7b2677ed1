"""Name -> class registries filled through the plugin hooks, with "did you mean" answers."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Generic, Iterator, TypeVar

from .errors import SirenError, UnknownPluginError

T = TypeVar("T")


@dataclass(frozen=True)
class Registration(Generic[T]):
    name: str
    cls: type[T]
    plugin: str
    aliases: tuple[str, ...] = ()


class Registry(Generic[T]):
    """Classes, not instances: backbones are gigabytes, so only what a config names gets built."""

    def __init__(self, kind: str):
        self.kind = kind
        self._by_name: dict[str, Registration[T]] = {}
        self._canonical: list[Registration[T]] = []

    def register(self, cls: type[T], *, plugin: str, aliases: tuple[str, ...] | list[str] = ()) -> None:
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise SirenError(f"plugin {plugin!r} registered a {self.kind} class {cls.__qualname__} without a `name`")
        entry = Registration(name=name, cls=cls, plugin=plugin, aliases=tuple(aliases))
        for key in (name, *entry.aliases):
            clash = self._by_name.get(key)
            if clash is not None:
                raise SirenError(
                    f"{self.kind} name {key!r} is registered twice: by plugin {clash.plugin!r} "
                    f"and by plugin {plugin!r}"
                )
        for key in (name, *entry.aliases):
            self._by_name[key] = entry
        self._canonical.append(entry)

    def get(self, name: str) -> Registration[T]:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownPluginError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        available = sorted(self.names())
        message = f"Unknown {self.kind} {name!r}."
        matches = difflib.get_close_matches(str(name), list(self._by_name), n=3, cutoff=0.5)
        close = list(dict.fromkeys(self._by_name[match].name for match in matches))
        if close:
            message += f" Did you mean: {', '.join(close)}?"
        return message + f" Available: {', '.join(available) or '(none)'}."

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Registration[T]]:
        return iter(self._canonical)

    def names(self) -> list[str]:
        return [entry.name for entry in self._canonical]
