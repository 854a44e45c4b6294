"""Rollout-side components: logits processors and rollout functions that change how completions are sampled.

* :mod:`trl_ext.rollout.temperature`: HAPO's entropy-adaptive sampling temperature (arXiv 2509.16591) for
  transformers ``generate``.

Submodules are imported on demand (``from trl_ext.rollout.temperature import ...``) so that importing this package
stays cheap.
"""
