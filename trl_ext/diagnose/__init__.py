"""Which method's regime is a GRPO run in? Measured on the run itself, from one short run of plain GRPO.

* :class:`~trl_ext.diagnose.callback.RegimeCallback` (:mod:`~trl_ext.diagnose.callback`): ``callbacks=[RegimeCallback()]`` on ``trl.GRPOTrainer``
  or any trl-ext trainer logs ``regime/*`` metrics with the run's own (console line, ``log_history``, trackers).
* :mod:`~trl_ext.diagnose.measures`: the measures, pure functions of tensors.
* :mod:`~trl_ext.diagnose.regimes`: each method's regime, the range where its mechanism acts and its source.
* :mod:`~trl_ext.diagnose.command`: ``trl-ext diagnose --config RECIPE [--steps N]`` / ``--from OUTPUT_DIR``.

Importing this package imports neither torch nor TRL; the callback does, on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RegimeCallback", "diagnose", "diagnose_from", "diagnose_main"]


def __getattr__(name: str) -> Any:
    if name == "RegimeCallback":
        from trl_ext.diagnose.callback import RegimeCallback

        return RegimeCallback
    if name in ("diagnose", "diagnose_from", "diagnose_main"):
        from trl_ext.diagnose import command

        return getattr(command, name)
    raise AttributeError(f"module 'trl_ext.diagnose' has no attribute {name!r}")
