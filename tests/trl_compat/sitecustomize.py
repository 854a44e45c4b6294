"""Installs ``trl_compat_shims`` (see its docstring) in Python subprocesses started by the tests under TRL 1.15.

``tests/conftest.py`` prepends this directory to ``PYTHONPATH`` only when the installed TRL is 1.15.x. Python imports
the first ``sitecustomize`` module on ``sys.path``, so this one then loads the next one (for example
``tests/engine_shims/sitecustomize.py``, or the interpreter's own), which would otherwise be shadowed.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

import trl_compat_shims

trl_compat_shims.install()


def _load_next_sitecustomize() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


_load_next_sitecustomize()
