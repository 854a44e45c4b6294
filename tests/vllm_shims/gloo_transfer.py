"""Test-only shim: TRL's server-mode weight sync with a gloo data plane, for a trainer and a vLLM server on the CPU.

Why it exists: TRL 1.16 pushes the training weights to a ``trl vllm-serve`` server through vLLM's NCCL weight-transfer
engine (the server is started with ``--weight-transfer-config '{"backend": "nccl"}'``).
``VLLMClient.init_communicator`` stops on any device but CUDA (``NotImplementedError: Weight synchronization runs on
vLLM's NCCL weight-transfer engine, which needs a CUDA device``, trl/generation/vllm_client.py), and the server's
NCCL engine needs CUDA as well. The control plane around it is plain HTTP and device-free: ``/init_weight_transfer_engine``
(rendezvous), ``/start_weight_update``, ``/update_weights`` (the tensors' names, dtypes and shapes, while the trainer
broadcasts them), ``/finish_weight_update``, ``/reset_prefix_cache``.

What it does: it replaces the data plane only, NCCL by a gloo process group over a TCP store at the trainer (rank 0;
the server's workers join at ``rank_offset``), on one machine (127.0.0.1).

* Server side, :func:`register` (run in every server process by ``vllm_shims.serve_cpu``): the weight-transfer backend
  ``"cpu_gloo"``, vLLM's NCCL engine with its rendezvous and receive done over gloo. Start and finish are the NCCL
  engine's own (vLLM's layerwise reload); the finish also re-ties the CPU lm_head (:func:`vllm_shims.retie_lm_head`,
  as the colocate shim does). Each update logs ``cpu_gloo weight transfer: update N received K tensors ...``.
* Trainer side, :func:`install_client`: ``VLLMClient.init_communicator`` for a CPU device (the same handshake, a
  gloo endpoint instead of NCCL's), and the ``packed_nccl_broadcast_producer`` that TRL's ``update_named_params``
  calls, for a gloo group. ``VLLMGeneration.sync_weights``, ``update_named_params`` and the HTTP sequence are TRL's,
  unchanged. CUDA devices and NCCL groups go to TRL's and vLLM's own functions.

Nothing in ``trl_ext`` imports this module.
"""

from __future__ import annotations

import atexit
import datetime
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["BACKEND", "GlooGroup", "install_client", "register"]

BACKEND = "cpu_gloo"
HOST = "127.0.0.1"
TIMEOUT = datetime.timedelta(seconds=300)


class GlooGroup:
    """A gloo process group of the trainer (rank 0) and the server's workers, outside ``torch.distributed``'s default
    group. ``group`` is the object itself: TRL's ``close_communicator`` clears ``communicator.group.store``/``socket``.
    """

    def __init__(self, address: str, port: int, rank: int, world_size: int) -> None:
        import torch.distributed as dist

        self.rank = rank
        self.store = dist.TCPStore(address, port, world_size, is_master=rank == 0, timeout=TIMEOUT)
        options = dist.ProcessGroupGloo._Options()
        options._timeout = TIMEOUT
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=HOST)]
        self.pg = dist.ProcessGroupGloo(self.store, rank, world_size, options)
        self.socket = None

    @property
    def group(self) -> GlooGroup:
        return self

    def broadcast(self, tensor: Any, src: int = 0) -> None:
        import torch.distributed as dist

        options = dist.BroadcastOptions()
        options.rootRank = src
        self.pg.broadcast([tensor], options).wait()

    def close(self) -> None:
        self.pg = None
        self.store = None


# ---------------------------------------------------------------------------------------------------------------------
# Server side
# ---------------------------------------------------------------------------------------------------------------------


def _engine_class() -> type:
    import torch
    from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferEngine

    from vllm_shims import retie_lm_head

    def log(message: str) -> None:  # vLLM's own INFO log is not configured in these server processes: print it
        print(f"cpu_gloo weight transfer: {message}", file=sys.stderr, flush=True)

    class GlooWeightTransferEngine(NCCLWeightTransferEngine):
        """vLLM's NCCL weight-transfer engine with a gloo rendezvous and receive (CPU workers)."""

        updates = 0

        def init_transfer_engine(self, init_info: Any) -> None:
            if self.model_update_group is not None:  # a new trainer connects: drop the previous one's group
                self.model_update_group.close()
            config = self.parallel_config
            rank = config.data_parallel_index * config.world_size + config.rank + init_info.rank_offset
            self.model_update_group = GlooGroup(
                init_info.master_address, init_info.master_port, rank, init_info.world_size
            )
            log(f"joined the trainer's group at {init_info.master_address}:{init_info.master_port} as rank {rank}")

        def update_weights(self, update_info: dict[str, Any]) -> None:
            # The base class ends with torch.accelerator.synchronize(), which raises without an accelerator; gloo's
            # broadcast has completed when it returns.
            self.receive_weights(self.parse_update_info(update_info))

        def receive_weights(self, update_info: Any) -> None:
            if self.model_update_group is None:
                raise RuntimeError("cpu_gloo weight transfer: init_weight_transfer_engine was not called")
            elements = 0
            for name, dtype_name, shape in zip(
                update_info.names, update_info.dtype_names, update_info.shapes, strict=True
            ):
                weight = torch.empty(shape, dtype=getattr(torch, dtype_name))
                self.model_update_group.broadcast(weight, src=0)
                self.model.load_weights([(name, weight)])
                elements += weight.numel()
            type(self).updates += 1
            log(f"update {self.updates} received {len(update_info.names)} tensors ({elements} elements)")

        def finish_weight_update(self) -> None:
            super().finish_weight_update()
            retie_lm_head(self.model)

        def shutdown(self) -> None:
            if self.model_update_group is not None:
                self.model_update_group.close()
                self.model_update_group = None

    return GlooWeightTransferEngine


def __getattr__(name: str) -> Any:
    # vLLM's factory loads the engine by module path and class name; building the class lazily keeps this module
    # importable without vLLM (and cheap where only the client side is used).
    if name == "GlooWeightTransferEngine":
        cls = _engine_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


def register() -> None:
    """Register the ``"cpu_gloo"`` weight-transfer backend with vLLM (idempotent; lazy: nothing is imported yet)."""
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    if BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(BACKEND, __name__, "GlooWeightTransferEngine")


# ---------------------------------------------------------------------------------------------------------------------
# Trainer side
# ---------------------------------------------------------------------------------------------------------------------

_CLIENT_INSTALLED = False


def install_client() -> None:
    """Give TRL's ``VLLMClient`` the gloo data plane for CPU devices (idempotent)."""
    global _CLIENT_INSTALLED
    if _CLIENT_INSTALLED:
        return
    import torch
    from trl.generation import vllm_client

    original_init = vllm_client.VLLMClient.init_communicator
    original_producer = vllm_client.packed_nccl_broadcast_producer

    def init_communicator(self: Any, device: Any = 0) -> None:
        if isinstance(device, int) or torch.device(device).type != "cpu":
            return original_init(self, device)
        if self.get_server_info()["weight_transfer_config"] is None:
            raise RuntimeError(f"the vLLM server at {self.base_url} has no weight-transfer engine")
        world_size = self.get_world_size() + 1  # the trainer is rank 0, the workers follow
        init_info = {
            "master_address": HOST,
            "master_port": self.group_port,
            "rank_offset": 1,
            "world_size": world_size,
        }
        with ThreadPoolExecutor(max_workers=1) as executor:  # the server blocks in the rendezvous while answering
            answer = executor.submit(
                self._post, f"{self.base_url}/init_weight_transfer_engine", json={"init_info": init_info}
            )
            self.communicator = GlooGroup(HOST, self.group_port, 0, world_size)
            answer.result()
        atexit.register(self.close_communicator)

    def packed_nccl_broadcast_producer(*, iterator: Any, group: Any, src: int, post_iter_func: Any, **kwargs: Any):
        if not isinstance(group, GlooGroup):
            return original_producer(iterator=iterator, group=group, src=src, post_iter_func=post_iter_func, **kwargs)
        for item in iterator:
            group.broadcast(post_iter_func(item).detach().contiguous(), src=src)

    vllm_client.VLLMClient.init_communicator = init_communicator
    vllm_client.packed_nccl_broadcast_producer = packed_nccl_broadcast_producer
    _CLIENT_INSTALLED = True
