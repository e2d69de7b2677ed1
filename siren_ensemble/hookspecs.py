"""The two hooks a plugin can implement.

Each hook receives a ``register`` callback; the host decides names and clashes and remembers
which plugin registered what. An implementation may accept fewer arguments than the spec, so
specs can grow without breaking plugins.
"""

import pluggy

hookspec = pluggy.HookspecMarker("siren_ensemble")
hookimpl = pluggy.HookimplMarker("siren_ensemble")


@hookspec
def register_backbones(register):
    """Register backbone adapter classes: ``register(AdapterClass, aliases=())``."""


@hookspec
def register_combiners(register):
    """Register combiner classes: ``register(CombinerClass, aliases=())``."""
