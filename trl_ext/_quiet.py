"""Targeted silencing of third-party output a trl-ext user cannot act on.

Installed once on ``import trl_ext`` (library use and the CLI alike); each rule matches one known message, so other
output of the same libraries still shows:

* bitsandbytes' error log on import when the optional ``kernels-community`` CPU kernel cannot be fetched (always the
  case offline; bitsandbytes falls back to its own CPU kernel);
* kernels' warning that it skips the publisher trust check for bitsandbytes' ``kernels-community`` CPU kernel
  because the Hub is offline (printed on every start with ``HF_HUB_OFFLINE=1``; nothing to trust or do);
* transformers' ``FutureWarning`` that ``gradient_checkpointing`` and its methods are renamed, raised by TRL 1.16's own
  calls (the user's config cannot avoid them).

:func:`progress_bars_disabled` turns transformers' progress bars (``Loading weights``, ``Writing model shards``) off for
a block; the trainers use it when ``disable_tqdm`` is set.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

__all__ = ["install", "progress_bars_disabled"]

_BITSANDBYTES_LOGGER = "bitsandbytes.backends.cpu.ops"
_BITSANDBYTES_MESSAGE = "Failed to load CPU gemm_4bit_forward from kernels-community"
_KERNELS_LOGGER = "kernels._internals.hf_hub"
_KERNELS_MESSAGE = "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'"
_RENAMED_CHECKPOINTING = r"`(is_)?gradient_checkpointing(_enable|_disable)?` is deprecated"


class _DropMessage(logging.Filter):
    """Drop the records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


_installed = False


def install() -> None:
    """Install the filters (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    logging.getLogger(_BITSANDBYTES_LOGGER).addFilter(_DropMessage(_BITSANDBYTES_MESSAGE))
    logging.getLogger(_KERNELS_LOGGER).addFilter(_DropMessage(_KERNELS_MESSAGE))
    warnings.filterwarnings("ignore", message=_RENAMED_CHECKPOINTING, category=FutureWarning, module=r"transformers\.")


@contextlib.contextmanager
def progress_bars_disabled(disabled: bool = True) -> Iterator[None]:
    """Within the block, transformers shows no progress bars (when ``disabled``; restored afterwards). A no-op when
    they are already off, so a user's own ``disable_progress_bar()`` is never undone."""
    from transformers.utils import logging as hf_logging

    if not disabled or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()
