"""Trainers: the base trainer (the two seams) and one module per named trainer.

The built-in trainers are declared in :mod:`trl_ext.catalogue`; the registry imports each on first use. The class
names resolve lazily here as in ``trl_ext`` (``from trl_ext.trainers import BNPOTrainer``).
"""

from trl_ext.catalogue import exported_names as _exported_names


def __getattr__(name: str):
    path = _exported_names().get(name)
    if path is not None:
        from trl_ext.registry import load_path

        return load_path(path)
    raise AttributeError(f"module 'trl_ext.trainers' has no attribute {name!r}")


__all__ = sorted(_exported_names())
