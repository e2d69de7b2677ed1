"""siren-ensemble: a harmful-content guard reading frozen LLMs' internal representations."""

from .ensemble import Ensemble, EnsembleResult
from .errors import ArtifactError, ConfigError, InputError, MemberError, SirenError
from .head import SirenHead
from .input_kinds import PromptResponse
from .streaming import EnsembleStream, StreamClosedError

__all__ = [
    "ArtifactError", "ConfigError", "Ensemble", "EnsembleResult", "EnsembleStream", "InputError", "MemberError",
    "PromptResponse", "SirenError", "SirenHead", "StreamClosedError",
]
__version__ = "0.1.0"
