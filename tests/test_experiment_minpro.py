"""The pieces MinPRO's experiments rest on (experiments/minpro_estimator.py, experiments/minpro_chain.py): the exact
expected reward behind the "true gradient", the weightings compared, the chain task's reward and the positive
control objective."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import minpro_chain  # noqa: E402
import minpro_estimator as est  # noqa: E402


def test_closed_form_expected_reward_matches_monte_carlo():
    """J(pi) in closed form is what sampling the Markov policy gives: the true gradient is the gradient of the truth."""
    generator = torch.Generator().manual_seed(0)
    target = est.chain_target(6)
    logits = est.sampler_logits(6, 10, target, 2.0, generator)
    sequences = est.sample(logits, 40_000, 0, generator)
    monte_carlo = est.prefix_reward(sequences, target).mean().item()
    assert est.expected_reward(logits, target).item() == pytest.approx(monte_carlo, abs=0.01)


def test_prefix_reward_counts_the_matching_prefix_only():
    target = torch.tensor([1, 2, 3, 4])
    sequences = torch.tensor([[1, 2, 3, 4], [1, 2, 0, 4], [0, 2, 3, 4]])
    assert est.prefix_reward(sequences, target).tolist() == [1.0, 0.5, 0.0]


def test_weightings_against_their_definitions():
    log_ratio = torch.tensor([[0.5, -1.0, 0.3, 2.0], [-0.2, 0.1, -0.4, 0.0]], dtype=torch.float64)
    product = est.prefix_weights(log_ratio, "prefix_product")
    minimum = est.prefix_weights(log_ratio, "minpro")
    capped = est.prefix_weights(log_ratio, "minpro_capped")
    for i in range(2):
        for t in range(4):
            assert product[i, t].item() == pytest.approx(float(torch.exp(log_ratio[i, :t].sum())))
            expected = float(torch.exp(log_ratio[i, :t].min())) if t else 1.0
            assert minimum[i, t].item() == pytest.approx(expected)
            assert capped[i, t].item() == pytest.approx(min(1.0, expected))
    assert torch.equal(est.prefix_weights(log_ratio, "token"), torch.ones_like(log_ratio))


def test_estimators_agree_on_policy_and_differ_off_policy():
    """At drift 0 every weighting is the same estimator; off-policy the prefix weights change the gradient."""
    generator = torch.Generator().manual_seed(1)
    target = est.chain_target(5)
    sampler = est.sampler_logits(5, 10, target, 2.0, generator)
    sequences = est.sample(sampler, 64, 0, generator)
    same = [est.batch_gradient(sampler, sampler, sequences, target, name) for name in est.WEIGHTINGS]
    for grad in same[1:]:
        torch.testing.assert_close(grad, same[0])
    policy = sampler + torch.randn(sampler.shape, generator=generator, dtype=torch.float64)
    token = est.batch_gradient(policy, sampler, sequences, target, "token")
    product = est.batch_gradient(policy, sampler, sequences, target, "prefix_product")
    assert not torch.allclose(token, product)


def test_count_chain_task():
    from trl_ext.data import count_chain_reward, get_task

    task = get_task("count_chain")
    dataset = task.make_dataset(64, 0)
    assert dataset[0]["answer"] == "".join(str((int(dataset[0]["prompt"][0]) + k) % 10) for k in range(1, 13))
    assert set(dataset["prompt"]) == {f"{d}=" for d in range(10)}
    answers = ["456789012345", "012345678901", "123456789012"]
    rewards = count_chain_reward(["3=", "9=", "0="], ["456789012345x", "01239", "2"], answer=answers)
    assert rewards == pytest.approx([1.0, 4 / 12, 0.0])
    assert count_chain_reward(["3="], ["4"], answer=[None]) == [None]
    with pytest.raises(ValueError, match="answer"):
        count_chain_reward(["3="], ["4"])
    assert task.max_completion_length == 12 and not task.binary_rewards


@pytest.fixture
def prefix_product_objective():
    """The control objective, registered for one test only (the registry is global; other tests list it)."""
    from trl_ext.registry import POLICY_OBJECTIVES, get_policy_objective

    minpro_chain.register_prefix_product()
    try:
        yield get_policy_objective("prefix_product")
    finally:
        POLICY_OBJECTIVES._items.pop("prefix_product", None)


def test_positive_control_weights_are_the_exclusive_prefix_product(prefix_product_objective):
    objective = prefix_product_objective(SimpleNamespace())
    log_ratio = torch.tensor([[0.5, -1.0, 0.3, 9.0], [-0.2, 7.0, 0.1, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 1]])  # the masked 7.0 and 9.0 must not enter any product
    ctx = SimpleNamespace(mask=mask, log_ratio=log_ratio, extras={})
    weights = objective.token_weights(ctx)
    expected = torch.tensor([[0.0, 0.5, -0.5, -0.2], [0.0, -0.2, -0.2, -0.1]]).exp()
    torch.testing.assert_close(weights, expected)


# ---------------------------------------------------------------------------------------------------------------
# The pre-registered verdict (experiments/preregistered/minpro_estimator.py) on hand-made result tables


def _report(gain=0.05, clipped_gain=0.05, *, noise=0.01, product_factor=1000.0, token_loss=0.2, identity_gap=0.0,
            far_lr=0.8, seeds=None):  # fmt: skip
    from preregistered import minpro_estimator as prereg

    runs = []
    for seed in seeds if seeds is not None else prereg.SEEDS:
        jitter = noise * (1 if seed % 2 else -1)  # a paired difference that varies by seed
        for direction in prereg.DIRECTIONS:
            for length in prereg.LENGTHS:
                for drift in prereg.DRIFTS:
                    off = drift > 0
                    base = 0.9 - (token_loss if off else 0.0)
                    cosine = {
                        "on_policy": 0.9, "token": base, "token_clipped": base, "prefix_product": base,
                        "minpro": base + (gain + jitter if off else 0.0),
                        "minpro_clipped": base + (clipped_gain + jitter if off else identity_gap),
                        "minpro_capped": base + (gain if off else 0.0),
                    }  # fmt: skip
                    variance = {arm: 0.2 for arm in cosine}
                    variance["prefix_product"] = 0.2 * (product_factor if off else 1.0)
                    run = {"seed": seed, "direction": direction, "length": length, "drift": drift,
                           "mean_abs_log_ratio": far_lr * drift}  # fmt: skip
                    for arm in cosine:
                        run[arm] = {"per_batch_cosine": cosine[arm], "relative_variance": variance[arm]}
                    runs.append(run)
    return {"runs": runs}


def _judge(report):
    from preregistered import minpro_estimator as prereg

    return prereg.judge(report)


def test_preregistered_minpro_verdict_shown_contradicted_and_not_shown():
    from trl_ext.compare.evidence import CONTRADICTED, NOT_SHOWN, SHOWN

    judged = _judge(_report())
    assert judged["registered_seeds"] and judged["summary"] == {"random": SHOWN, "improvement": SHOWN}
    effect = judged["random"]["effects"]["minpro - token"]
    assert effect["n"] == 10 and effect["mean"] == pytest.approx(0.05) and effect["in_favour"] == 10
    # one pair short of the minimum effect decides the direction: the weaker verdict wins
    judged = _judge(_report(clipped_gain=0.0, noise=0.001))
    assert judged["random"]["verdicts"] == {"minpro - token": SHOWN, "minpro_clipped - token_clipped": CONTRADICTED}
    assert judged["summary"]["random"] == CONTRADICTED
    assert _judge(_report(gain=0.02, noise=0.05))["summary"]["random"] == NOT_SHOWN  # too noisy to tell


def test_preregistered_minpro_verdict_at_the_minimum_effect():
    from trl_ext.compare.evidence import CONTRADICTED, SHOWN

    # No noise: the interval is the point; exactly the minimum effect counts, just below it is ruled out.
    assert _judge(_report(gain=0.02, clipped_gain=0.02, noise=0.0))["summary"]["random"] == SHOWN
    assert _judge(_report(gain=0.0199, clipped_gain=0.02, noise=0.0))["summary"]["random"] == CONTRADICTED


def test_preregistered_minpro_controls_decide_whether_the_regime_was_reached():
    from preregistered import minpro_estimator as prereg

    assert _judge(_report(product_factor=9.9))["summary"]["random"] == prereg.REGIME_NOT_REACHED
    assert _judge(_report(product_factor=10.0))["summary"]["random"] != prereg.REGIME_NOT_REACHED
    assert _judge(_report(token_loss=0.049))["summary"]["random"] == prereg.REGIME_NOT_REACHED
    assert _judge(_report(identity_gap=1e-6))["random"]["controls"]["identity_at_drift_0"] is False
    # far = mean |log rho| >= 0.5: at 0.5 per unit of drift, drifts 1.0-2.0 count, 3 per seed
    controls = _judge(_report(far_lr=0.5))["random"]["controls"]
    assert set(controls["far_drifts_per_seed"].values()) == {3} and controls["enough_far_drifts"]
    controls = _judge(_report(far_lr=0.3))["random"]["controls"]  # 0.3, 0.45, 0.6: drift 2.0 only
    assert set(controls["far_drifts_per_seed"].values()) == {1} and not controls["held"]
    assert not _judge(_report(seeds=(100, 101)))["registered_seeds"]


# ---------------------------------------------------------------------------------------------------------------
# The pre-registered training verdict (experiments/preregistered/minpro_chain.py) on hand-made result tables


def _chain_report(gain=0.1, *, noise=0.01, peak=0.5, fall=1.0, unstable=None, clip=0.1, seeds=None, batches=20):
    """grpo: reward ``peak`` for the first half, then ``peak * (1 - fall)`` on its first ``unstable`` seeds (flat 0 on
    the others); minpro: the same first half, then grpo's second half + ``gain`` +- ``noise`` (alternating by seed)."""
    from preregistered import minpro_chain as prereg

    seeds = prereg.SEEDS if seeds is None else seeds
    unstable = len(seeds) if unstable is None else unstable
    half = batches // 2
    runs = {"grpo": [], "minpro": []}
    for index, seed in enumerate(seeds):
        first, second = (peak, peak * (1 - fall)) if index < unstable else (0.0, 0.0)
        jitter = noise * (1 if index % 2 else -1)
        steps = 4 * batches
        common = {"seed": seed, "grad_norm": [1.0] * steps, "clip_region": [clip] * steps}
        runs["grpo"].append({**common, "reward": [first] * half + [second] * (batches - half)})
        runs["minpro"].append({**common, "reward": [first] * half + [second + gain + jitter] * (batches - half)})
    return {"runs": runs}


def test_chain_metrics_by_hand():
    from preregistered import minpro_chain as prereg

    assert prereg.largest_drop([0.1, 0.5, 0.2, 0.4, 0.1, 0.3]) == pytest.approx(0.4)
    assert prereg.largest_drop([0.1, 0.2, 0.3]) == 0.0
    # relative to the running peak, counted once the peak reaches the floor (0.10): 0.05 -> 0.01 is not counted
    assert prereg.PEAK_FLOOR == 0.10
    assert prereg.largest_relative_fall([0.05, 0.01, 0.2, 0.1, 0.15]) == pytest.approx(0.5)
    assert prereg.largest_relative_fall([0.05, 0.01, 0.09]) == 0.0
    assert prereg.moving_average([3.0, 6.0, 9.0, 0.0]) == [3.0, 4.5, 6.0, 5.0]
    assert prereg.second_half_reward([9.0, 9.0, 1.0, 2.0]) == 1.5
    assert prereg.second_half_reward([9.0, 9.0, 1.0, 2.0, 3.0]) == 2.0  # odd: the middle batch is in the second half
    run = {"reward": [0.0] * 6 + [0.5] * 4, "grad_norm": [0.0, 1.0, 1.0], "clip_region": [0.9, 0.1, 0.2]}
    metrics = prereg.run_metrics(run)
    assert metrics["final_reward"] == pytest.approx(0.4) and metrics["clip_fraction"] == pytest.approx(0.15)


def test_preregistered_chain_verdict_shown_contradicted_and_not_shown():
    from preregistered import minpro_chain as prereg

    from trl_ext.compare.evidence import CONTRADICTED, NOT_SHOWN, SHOWN

    judged = prereg.judge(_chain_report(gain=0.2))
    assert judged["registered_seeds"] and judged["controls"]["held"] and judged["summary"] == SHOWN
    assert judged["primary"]["n"] == len(prereg.SEEDS) and judged["primary"]["mean"] == pytest.approx(0.2)
    assert judged["unstable_seeds"] == {"grpo": len(prereg.SEEDS), "minpro": len(prereg.SEEDS)}
    assert prereg.judge(_chain_report(gain=-0.1))["summary"] == CONTRADICTED
    assert prereg.judge(_chain_report(gain=prereg.MIN_EFFECT, noise=0.1))["summary"] == NOT_SHOWN
    assert not prereg.judge(_chain_report(seeds=(100, 101)))["registered_seeds"]


def test_preregistered_chain_stopping_rule():
    """A run stopped for time counts if it completed the first 8 seeds or more, in order; 3/5 of them must fall."""
    from preregistered import minpro_chain as prereg

    assert prereg.MIN_SEEDS == 8
    assert prereg.judge(_chain_report(seeds=tuple(range(8))))["registered_seeds"]
    assert prereg.judge(_chain_report(seeds=tuple(range(9))))["registered_seeds"]
    assert not prereg.judge(_chain_report(seeds=tuple(range(7))))["registered_seeds"]
    assert not prereg.judge(_chain_report(seeds=(0, 1, 2, 3, 4, 5, 6, 8)))["registered_seeds"]  # not in order
    assert prereg.judge(_chain_report(seeds=tuple(range(8)), unstable=5))["controls"]["grpo_unstable"]  # 5 of 8
    assert not prereg.judge(_chain_report(seeds=tuple(range(8)), unstable=4))["controls"]["grpo_unstable"]
    assert not prereg.judge(_chain_report(seeds=tuple(range(9)), unstable=5))["controls"]["grpo_unstable"]  # 5 of 9


def test_preregistered_chain_verdict_at_the_minimum_effect():
    from preregistered import minpro_chain as prereg

    from trl_ext.compare.evidence import CONTRADICTED, SHOWN

    # No noise: the interval is the point; exactly the minimum effect counts, just below it is ruled out.
    assert prereg.judge(_chain_report(gain=prereg.MIN_EFFECT, noise=0.0))["summary"] == SHOWN
    assert prereg.judge(_chain_report(gain=prereg.MIN_EFFECT - 1e-6, noise=0.0))["summary"] == CONTRADICTED


def test_preregistered_chain_controls_at_their_thresholds():
    from preregistered import minpro_chain as prereg

    need = 6  # 3/5 of 10 seeds
    assert prereg.MIN_UNSTABLE_SHARE == (3, 5) and len(prereg.SEEDS) == 10
    assert prereg.judge(_chain_report(unstable=need))["controls"]["grpo_unstable"]
    judged = prereg.judge(_chain_report(unstable=need - 1, gain=0.5))
    assert judged["controls"]["grpo_unstable_seeds"] == need - 1 and judged["summary"] == prereg.REGIME_NOT_REACHED
    # the fall (relative to the peak) must reach the threshold on a seed to count
    assert prereg.UNSTABLE_FALL == 0.35
    assert prereg.judge(_chain_report(fall=0.35 + 1e-9))["controls"]["held"]
    judged = prereg.judge(_chain_report(fall=0.35 - 1e-9))
    assert judged["controls"]["grpo_unstable_seeds"] == 0 and judged["summary"] == prereg.REGIME_NOT_REACHED
    # ... from a peak at or above the floor: a collapse from below 0.10 is not counted
    assert prereg.judge(_chain_report(peak=0.10))["controls"]["held"]
    assert prereg.judge(_chain_report(peak=0.10 - 1e-9))["controls"]["grpo_unstable_seeds"] == 0
    # far off-policy: grpo's clipped-token fraction
    assert prereg.judge(_chain_report(clip=prereg.MIN_CLIP_FRACTION))["controls"]["off_policy"]
    judged = prereg.judge(_chain_report(clip=prereg.MIN_CLIP_FRACTION - 1e-9, gain=0.5))
    assert not judged["controls"]["off_policy"] and judged["summary"] == prereg.REGIME_NOT_REACHED
