"""The one family of errors shown to the user: the CLI prints their message on one line."""


class SirenError(Exception):
    """A problem the user can fix: bad config, bad artifact, bad input, unknown plugin."""


class ConfigError(SirenError):
    """A config field is wrong; the message starts with the field's path (``members[1].dtype``)."""


class ArtifactError(SirenError):
    """A SIREN head or weight file is missing or inconsistent; the message names the file and field."""


class InputError(SirenError):
    """A text to score is malformed; the message names its index or line."""


class UnknownPluginError(SirenError):
    """A backbone or combiner name that no plugin registered."""


class MemberError(SirenError):
    """A member failed while scoring (its forward pass raised, or it produced a non-finite score)."""
