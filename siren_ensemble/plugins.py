"""Plugin manager: built-in plugins and third-party entry points, loaded once and lazily."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import pluggy

from . import hookspecs
from .registry import Registry

ENTRY_POINT_GROUP = "siren_ensemble"
#: Comma-separated distribution names; when set, only these third-party plugins load ("" loads none).
LOAD_PLUGINS_ENV = "SIREN_ENSEMBLE_LOAD_PLUGINS"
BUILTIN_PROVIDER = "siren-ensemble (built-in)"
DEFAULT_PLUGINS = (
    "siren_ensemble.default_plugins.backbones",
    "siren_ensemble.default_plugins.combiners",
)

pm = pluggy.PluginManager("siren_ensemble")
pm.add_hookspecs(hookspecs)

_loaded = False
#: "distribution version" of the entry-point plugins registered by name under LOAD_PLUGINS_ENV (pluggy
#: records the distribution only for those it loads itself).
_named_providers: dict[str, str] = {}


def load_plugins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    _load_entry_points()
    pm.check_pending()


def _load_entry_points() -> None:
    allowed = os.environ.get(LOAD_PLUGINS_ENV)
    if allowed is None:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        return
    wanted = {name.strip().lower() for name in allowed.split(",") if name.strip()}
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = entry_point.dist.name.lower() if entry_point.dist else ""
        if dist in wanted and pm.get_plugin(entry_point.name) is None:
            pm.register(entry_point.load(), name=entry_point.name)
            _named_providers[entry_point.name] = f"{entry_point.dist.metadata['name']} {entry_point.dist.version}"


def provider_name(plugin_name: str) -> str:
    if plugin_name in DEFAULT_PLUGINS:
        return BUILTIN_PROVIDER
    if plugin_name in _named_providers:
        return _named_providers[plugin_name]
    plugin = pm.get_plugin(plugin_name)
    for registered, dist in pm.list_plugin_distinfo():
        if registered is plugin:
            return f"{dist.metadata['name']} {dist.version}"
    return plugin_name


def _collect(kind: str, hook_name: str) -> Registry:
    """Call each implementation separately so the registry knows which plugin gave each name."""
    load_plugins()
    registry: Registry = Registry(kind)
    hook = getattr(pm.hook, hook_name)
    # get_hookimpls() is in registration order: built-ins first, so a clash names the newcomer second.
    for impl in hook.get_hookimpls():
        provider = provider_name(impl.plugin_name)

        def register(cls, aliases=(), _provider=provider):
            registry.register(cls, plugin=_provider, aliases=aliases)

        # An implementation may take fewer arguments than the spec (pluggy's rule).
        impl.function(**{name: value for name, value in {"register": register}.items() if name in impl.argnames})
    return registry


def backbones() -> Registry:
    return _collect("backbone", "register_backbones")


def combiners() -> Registry:
    return _collect("combiner", "register_combiners")
