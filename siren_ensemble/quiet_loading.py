"""Loading transformers models without their chatter: used by the adapters, the GGUF converter and the test models."""

from __future__ import annotations

import contextlib
import functools
import sys
from unittest import mock

from tqdm.auto import tqdm


@contextlib.contextmanager
def quiet_transformers():
    """Hide load reports (e.g. the unused LM head) and progress bars while loading; restore after.

    The GGUF de-quantisation bar (plain tqdm inside transformers) stays on a terminal, where a
    minute-long conversion deserves one, and goes quiet when stderr is a file or a pipe.
    """
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars_were_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    gguf_bar = functools.partial(tqdm, disable=not sys.stderr.isatty(), leave=False)
    try:
        with mock.patch.object(gguf_utils, "tqdm", gguf_bar):
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars_were_enabled:
            hf_logging.enable_progress_bar()
