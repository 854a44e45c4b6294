"""What the built-in components are, without importing them (no torch, no TRL): the text of ``trl-ext list``.

The trainers register themselves with these descriptions (``trl_ext/trainers``), so the table cannot drift from the
registry; ``tests/test_first_day.py`` checks that every built-in estimator and objective is described here.
"""

from __future__ import annotations

#: name -> (what it changes relative to GRPO, paper)
BUILTIN_TRAINERS: dict[str, tuple[str, str]] = {
    "bnpo": (
        "advantage: (R - p) / BetaPDF(p; alpha, beta), Beta fitted to the batch's success rates (not loss_type='bnpo')",
        "arXiv 2506.02864",
    ),
    "calibadv": (
        "rollout: multi-turn search agent (retriever between turns); advantage: token-level, soft penalty on correct "
        "search steps of negative trajectories (silver docs), per-group answer rebalance",
        "arXiv 2604.18235",
    ),
    "diva": (
        "batch: each problem with difficulty-adaptive variants (store per id); advantage: local + global group "
        "z-scores, difficulty-weighted, low-reward groups damped",
        "arXiv 2603.01106",
    ),
    "grpo": (
        "nothing: trl.GRPOTrainer's advantage and loss (the baseline every benchmark compares against)",
        "arXiv 2402.03300",
    ),
    "hapo": (
        "rollout: entropy-adaptive temperature; advantage: token-level group average; loss: entropy-driven advantage "
        "redistribution, asymmetric adaptive clipping, dual clip",
        "arXiv 2509.16591",
    ),
    "minpro": (
        "loss: each token's clipped surrogate weighted by the detached minimum prefix ratio (off-policy only)",
        "arXiv 2601.22718",
    ),
}

#: advantage estimator name -> one line (``advantage_estimator=...``)
BUILTIN_ESTIMATORS: dict[str, str] = {
    "beta_normalization": "BNPO: (R - p) / BetaPDF(p), Beta fitted per generation batch",
    "calibadv": "CalibAdv: token-level calibrated advantages of search trajectories",
    "diva": "DIVA-GRPO: local + global group z-scores with difficulty weighting",
    "grpo": "TRL's group-relative advantage (scale_rewards, multi-objective aggregation)",
    "hapo_tlga": "HAPO: token-level group average advantage with a GRPO fallback",
}

#: policy objective name -> one line (``policy_objective=...``)
BUILTIN_OBJECTIVES: dict[str, str] = {
    "grpo": "TRL's loss for every loss_type",
    "hapo": "HAPO: advantage redistribution, asymmetric adaptive clipping, dual clip",
    "minpro": "MinPRO: clipped surrogate weighted by the minimum prefix ratio",
}

#: The method metrics shown on the console progress line of ``trl-ext train`` / ``quickstart`` and in the table of
#: ``trl-ext compare``, per metric namespace (every trainer logs all of ``<namespace>/*``; see each trainer's page).
#: The progress line shows those of every namespace present in a log, so e.g. ``grpo`` with
#: ``advantage_estimator=beta_normalization`` shows BNPO's.
KEY_METRICS: dict[str, tuple[str, ...]] = {
    "bnpo": ("bnpo/alpha", "bnpo/beta", "bnpo/max_weight"),
    "minpro": ("minpro/weight_min", "minpro/weight_mean"),
    "hapo": ("hapo/temperature_mean", "hapo/clip_high_mean"),
    "diva": ("diva/frac_zero_std_local", "diva/frac_zero_std_global"),
    "calibadv": ("calibadv/frac_neg_traj_calibrated", "calibadv/turns_mean"),
}
