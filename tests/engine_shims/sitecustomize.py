"""Test-only launch shim: run accelerate's FSDP2 path on CPU processes (gloo), for ``tests/test_engines.py``.

``tests/test_engines.py`` puts this directory on ``PYTHONPATH`` of the processes it launches, so Python imports this
module at start-up. Nothing in ``trl_ext`` imports it, and it does nothing unless both hold: CUDA is unavailable and
``ACCELERATE_USE_FSDP=true`` (set by ``accelerate launch`` for an FSDP config). On a GPU machine it is inert.

Why it is needed: accelerate 1.15/1.16 classifies processes without a GPU as ``MULTI_CPU`` (or as one process), and
for those it never applies the FSDP plugin: with ``use_cpu: true`` the model is silently wrapped in DDP, with
``use_cpu: false`` in nothing at all, so an "FSDP2 on CPU" run would test no sharding. FSDP2 itself (``fully_shard``,
DTensor) works over gloo. The shim wraps ``accelerate.state.PartialState._prepare_backend`` so that a launched process
(``LOCAL_RANK`` set) is classified as ``MULTI_GPU`` with the ``gloo`` backend, and sets ``ACCELERATE_TORCH_DEVICE=cpu``
so that accelerate keeps the device on the CPU instead of selecting a CUDA device. accelerate then initialises the
process group over gloo and ``Accelerator.prepare`` calls ``fully_shard`` as it does on GPUs. The training script must
pass ``use_cpu=False`` and ``ddp_backend="gloo"``.
"""

from __future__ import annotations

import os


def _install() -> None:
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or "LOCAL_RANK" not in os.environ:
        return
    import torch

    if torch.cuda.is_available():
        return
    os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "cpu")

    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    original = PartialState._prepare_backend

    def prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        found_backend, distributed_type = original(self, cpu, sagemaker_dp, backend)
        if distributed_type in (DistributedType.NO, DistributedType.MULTI_CPU):
            return "gloo", DistributedType.MULTI_GPU
        return found_backend, distributed_type

    PartialState._prepare_backend = prepare_backend


_install()
