"""BNPO (specs/bnpo.md): density and fit identities, the worked examples, degenerate inputs, errors, properties,
and the trainer end to end (1 process; 2 processes are in test_distributed.py, QLoRA in test_qlora.py)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trl_ext import BNPOConfig, BNPOTrainer, get_trainer
from trl_ext.advantages.base import AdvantageBatch
from trl_ext.advantages.beta_normalization import (
    BetaNormalizationAdvantage,
    beta_log_pdf,
    beta_normalized_advantages,
    combine_components,
)
from trl_ext.advantages.grpo import grpo_advantages

# §5.1: four prompts x four completions, binary accuracy.
ACCURACY = [1, 1, 0, 0, 1, 1, 1, 0, 1, 0, 1, 1, 1, 1, 1, 1]
# §5.3: format rewards for the same completions.
FORMAT = [1, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1]


def bnpo(rewards, group_size=4, **kwargs):
    return beta_normalized_advantages(torch.tensor(rewards, dtype=torch.float64), group_size, **kwargs)


def population_std_grpo(rewards, group_size):
    grouped = torch.tensor(rewards, dtype=torch.float64).view(-1, group_size)
    mean, std = grouped.mean(1, keepdim=True), grouped.std(1, unbiased=False, keepdim=True)
    return torch.where(std > 0, (grouped - mean) / torch.where(std > 0, std, 1.0), 0.0).reshape(-1)


def make_args(**overrides):
    return BNPOConfig(output_dir="unused", use_cpu=True, bf16=False, report_to="none", **overrides)


def make_batch(columns, names=None, group_size=4, weights=None):
    rewards = torch.tensor(columns, dtype=torch.float32).T.contiguous()
    k = rewards.shape[1]
    return AdvantageBatch(
        rewards_per_func=rewards,
        reward_weights=torch.ones(k) if weights is None else torch.tensor(weights, dtype=torch.float32),
        reward_func_names=names or [f"r{i}" for i in range(k)],
        num_generations=group_size,
    )


# 1. Density identities --------------------------------------------------------------------------------------------
def test_uniform_density_is_one_everywhere_including_the_edges():
    p = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.equal(beta_log_pdf(p, 1.0, 1.0), torch.zeros_like(p))


def test_three_halves_density_is_semicircle():
    p = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    expected = 8 / math.pi * torch.sqrt(p * (1 - p))
    torch.testing.assert_close(beta_log_pdf(p, 1.5, 1.5).exp(), expected, atol=1e-12, rtol=0)


def test_alpha_beta_one_is_reinforce_with_group_mean_baseline():
    # Identical p in every group (p = 0.5) -> v = 0 -> alpha = beta = 1 -> A = s - p.
    rewards = [1, 0, 1, 0, 0, 1, 1, 0]
    advantages, fit, _ = bnpo(rewards)
    assert (fit.alpha, fit.beta) == (1.0, 1.0)
    torch.testing.assert_close(advantages, torch.tensor(rewards, dtype=torch.float64) - 0.5, atol=0, rtol=0)


# 2. Fit identities ------------------------------------------------------------------------------------------------
def test_section_5_2_grpo_identity():
    rewards = [1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0]
    advantages, fit, _ = bnpo(rewards)
    assert fit.m == pytest.approx(0.5) and fit.v == pytest.approx(0.0625)
    assert fit.alpha == pytest.approx(1.5) and fit.beta == pytest.approx(1.5)
    torch.testing.assert_close(advantages, math.pi / 8 * population_std_grpo(rewards, 4), atol=1e-12, rtol=0)
    expected = [0.6802, -0.2267, -0.2267, -0.2267, 0.3927, 0.3927, -0.3927, -0.3927, 0.2267, 0.2267, 0.2267, -0.6802]
    torch.testing.assert_close(advantages, torch.tensor(expected, dtype=torch.float64), atol=1e-4, rtol=0)


def test_k_zero_gives_uniform_and_half_advantages():
    # G = 2, p = {0, 0.5, 1}: m = 0.5, v = 0.25 = m(1 - m) -> k = 0 -> alpha = beta = 1.
    advantages, fit, _ = bnpo([0, 0, 1, 0, 1, 1], group_size=2)
    assert (fit.alpha, fit.beta) == (1.0, 1.0)
    assert advantages.tolist() == [0.0, 0.0, 0.5, -0.5, 0.0, 0.0]


# 3. §5.1 ----------------------------------------------------------------------------------------------------------
def test_section_5_1_fit_and_table():
    advantages, fit, stats = bnpo(ACCURACY)
    assert fit.alpha == pytest.approx(1.875, abs=1e-4) and fit.beta == pytest.approx(1.29167, abs=1e-4)
    assert fit.m == pytest.approx(0.75) and fit.v == pytest.approx(0.041667, abs=1e-6)
    expected = [
        *[0.4102, 0.4102, -0.4102, -0.4102],
        *[0.1761, 0.1761, 0.1761, -0.5282],
        *[0.1761, -0.5282, 0.1761, 0.1761],
        *[0.0, 0.0, 0.0, 0.0],
    ]
    torch.testing.assert_close(advantages, torch.tensor(expected, dtype=torch.float64), atol=1e-4, rtol=0)
    assert stats["max_weight"] == pytest.approx(0.8203, abs=1e-4)
    # Same (alpha, beta) at p = 1/16: 1/f = 4.2128.
    assert math.exp(-beta_log_pdf(torch.tensor(1 / 16), fit.alpha, fit.beta)) == pytest.approx(4.2128, abs=1e-4)


# 4. §5.3 decomposition --------------------------------------------------------------------------------------------
def test_section_5_3_decomposition():
    _, fit_format, _ = bnpo(FORMAT)
    assert fit_format.alpha == pytest.approx(2.2396, abs=1e-4) and fit_format.beta == pytest.approx(1.1771, abs=1e-4)
    estimator = BetaNormalizationAdvantage(make_args(bnpo_advantage_decomposition=True))
    output = estimator(make_batch([ACCURACY, FORMAT], names=["accuracy", "format"]))
    assert output.advantages.dtype == torch.float32
    torch.testing.assert_close(
        output.advantages[:4], torch.tensor([0.2834, 0.2834, -0.1268, -0.4400]), atol=1e-4, rtol=0
    )
    assert output.metrics["bnpo/format/alpha"] == pytest.approx(2.2396, abs=1e-4)
    assert output.metrics["bnpo/accuracy/alpha"] == pytest.approx(1.875, abs=1e-4)


def test_section_5_3_summed_reward_without_decomposition():
    estimator = BetaNormalizationAdvantage(make_args(bnpo_reward_max=2.0))
    output = estimator(make_batch([ACCURACY, FORMAT]))
    assert output.metrics["bnpo/alpha"] == pytest.approx(2.3135, abs=1e-4)
    assert output.metrics["bnpo/beta"] == pytest.approx(1.3031, abs=1e-4)
    torch.testing.assert_close(
        output.advantages[:4], torch.tensor([0.2607, 0.2607, -0.0869, -0.4345]), atol=1e-4, rtol=0
    )


def test_reward_weights_decomposition_and_undefined_components():
    a = torch.tensor([[1.0, 3.0], [2.0, 0.0], [5.0, 7.0]], dtype=torch.float64)
    defined = torch.tensor([[True, True], [True, False], [False, False]])
    combined = combine_components(a, defined, "reward_weights", [1.0, 3.0])
    assert combined.tolist() == [(1 + 9) / 4, 2.0, 0.0]
    assert combine_components(a, defined, "mean").tolist() == [2.0, 2.0, 0.0]
    # A row whose defined weights sum to zero gets 0, not NaN.
    assert combine_components(a, defined, "reward_weights", [0.0, 3.0]).tolist() == [3.0, 0.0, 0.0]


def test_identically_zero_component_gives_zero_advantage():
    estimator = BetaNormalizationAdvantage(make_args(bnpo_advantage_decomposition=True))
    zeros = [0] * 16
    output = estimator(make_batch([ACCURACY, zeros]))
    only_accuracy, _, _ = bnpo(ACCURACY)
    torch.testing.assert_close(output.advantages.double(), only_accuracy / 2, atol=1e-7, rtol=0)


# 5. Degenerate inputs ---------------------------------------------------------------------------------------------
def test_all_groups_solved_or_failed_gives_zero():
    advantages, _, _ = bnpo([1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1])
    assert torch.equal(advantages, torch.zeros(12, dtype=torch.float64))


def test_single_group_is_uniform():
    advantages, fit, _ = bnpo([1, 0, 0, 0])
    assert (fit.alpha, fit.beta) == (1.0, 1.0)
    assert advantages.tolist() == [0.75, -0.25, -0.25, -0.25]


def test_group_of_one_completion_gives_zero():
    advantages, _, _ = bnpo([1, 0, 1, 1, 0], group_size=1)
    assert torch.equal(advantages, torch.zeros(5, dtype=torch.float64))


def test_one_outlier_in_a_tight_cluster_is_flagged_and_the_recommended_cap_bounds_it():
    # 63 prompts at 8/16 or 9/16 successes and one at 1/16: the concentrated fit gives the outlier a weight near 6.5e5
    # under the authors' cap (1e6), i.e. advantages ~1e5 times the others'. bnpo/frac_weight_large flags it, and the
    # recommended bnpo_max_inv_density of 10 bounds it.
    rewards = []
    for index in range(63):
        successes = 8 if index % 2 else 9
        rewards += [1] * successes + [0] * (16 - successes)
    rewards += [1] + [0] * 15
    advantages, _, stats = bnpo(rewards, group_size=16)
    assert stats["max_weight"] > 1e5 and advantages[-16:].abs().max() > 1e5
    assert advantages[:-16].abs().max() < 1.0
    assert stats["frac_weight_large"] == pytest.approx(1 / 64)
    safer, _, safer_stats = bnpo(rewards, group_size=16, max_inv_density=10.0)
    assert safer.abs().max() <= 10.0 and safer_stats["frac_weight_capped"] == pytest.approx(1 / 64)
    torch.testing.assert_close(safer[:-16], advantages[:-16])  # the cluster is untouched


def test_weight_cap_bounds_the_advantage():
    # One rare success (p = 1/16) among concentrated groups: 1/f is large; the cap bounds it.
    def group(successes):
        return [1] * successes + [0] * (16 - successes)

    rewards = group(1) + group(12) * 6 + group(13) + group(11)
    uncapped, _, stats = bnpo(rewards, group_size=16)
    assert stats["max_weight"] > 2.0
    capped, _, capped_stats = bnpo(rewards, group_size=16, max_inv_density=2.0)
    assert capped_stats["max_weight"] <= 2.0 and capped_stats["frac_weight_capped"] > 0
    assert capped.abs().max() <= 2.0 and uncapped.abs().max() > capped.abs().max()


def test_unscorable_rows_are_excluded_and_get_zero():
    nan = float("nan")
    rewards = [1, 0, nan, nan, nan, nan, nan, nan, 1, 1, 0, nan]
    advantages, fit, _ = bnpo(rewards)
    assert torch.isfinite(advantages).all()
    assert advantages[2:8].tolist() == [0.0] * 6
    assert fit.num_groups == 2  # the all-NaN group does not take part
    # Row-level: rows where every reward function returned None, through the estimator.
    estimator = BetaNormalizationAdvantage(make_args())
    output = estimator(make_batch([[nan if math.isnan(r) else r for r in rewards]]))
    assert torch.isfinite(output.advantages).all() and output.advantages[2:8].abs().sum() == 0


# 6. Range errors --------------------------------------------------------------------------------------------------
def test_reward_outside_range_names_fields_range_and_value():
    with pytest.raises(ValueError) as info:
        bnpo([0, 1, 2, 0], reward_name="accuracy")
    message = str(info.value)
    for needle in ("BNPO reward 2.0", "completion 2", "accuracy", "[bnpo_reward_min, bnpo_reward_max] = [0.0, 1.0]"):
        assert needle in message


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"bnpo_reward_min": 1.0, "bnpo_reward_max": 1.0}, "bnpo_reward_min"),
        ({"bnpo_reward_min": 2.0}, "bnpo_reward_min"),
        ({"bnpo_max_inv_density": 0.0}, "bnpo_max_inv_density"),
        ({"bnpo_decomposition_weighting": "median"}, "bnpo_decomposition_weighting"),
        ({"bnpo_reward_max": [1.0, 2.0]}, "bnpo_reward_max"),
    ],
)
def test_invalid_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        make_args(**overrides)


def test_config_keeps_loss_type_and_accepts_trl_bnpo_aggregation():
    args = make_args(loss_type="bnpo")
    assert args.loss_type == "bnpo" and args.advantage_estimator == "beta_normalization"
    assert isinstance(args.bnpo_reward_min, float) and args.bnpo_reward_max == 1.0
    assert get_trainer("bnpo") == (BNPOTrainer, BNPOConfig)


# 7. Permutation equivariance and 8. statelessness -----------------------------------------------------------------
def test_permuting_groups_and_rows_permutes_the_output():
    rewards = torch.tensor(ACCURACY, dtype=torch.float64)
    reference, _, _ = beta_normalized_advantages(rewards, 4)
    generator = torch.Generator().manual_seed(0)
    group_order = torch.randperm(4, generator=generator)
    row_order = torch.cat([g * 4 + torch.randperm(4, generator=generator) for g in group_order])
    permuted, _, _ = beta_normalized_advantages(rewards[row_order], 4)
    torch.testing.assert_close(permuted, reference[row_order], atol=1e-12, rtol=0)


def test_estimator_is_stateless():
    estimator = BetaNormalizationAdvantage(make_args())
    first = estimator(make_batch([ACCURACY])).advantages
    estimator(make_batch([[1, 0, 0, 0, 0, 0, 0, 1]]))
    assert torch.equal(estimator(make_batch([ACCURACY])).advantages, first)
    assert estimator.state_dict() == {}


# Property tests ---------------------------------------------------------------------------------------------------
@st.composite
def grouped_rewards(draw):
    group_size = draw(st.integers(1, 8))
    num_groups = draw(st.integers(1, 8))
    value = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0, allow_nan=False), st.just(float("nan")))
    rewards = draw(st.lists(value, min_size=group_size * num_groups, max_size=group_size * num_groups))
    cap = draw(st.sampled_from([1e6, 10.0, 1.5]))
    return torch.tensor(rewards, dtype=torch.float64), group_size, cap


@settings(max_examples=300, deadline=None)
@given(grouped_rewards())
def test_property_finite_and_zero_mean_within_groups(data):
    rewards, group_size, cap = data
    advantages, fit, stats = beta_normalized_advantages(rewards, group_size, max_inv_density=cap)
    assert torch.isfinite(advantages).all()
    assert math.isfinite(fit.alpha) and math.isfinite(fit.beta) and fit.alpha >= 1 and fit.beta >= 1
    assert all(math.isfinite(v) for v in stats.values())
    assert advantages[torch.isnan(rewards)].abs().sum() == 0
    grouped, valid = advantages.view(-1, group_size), ~torch.isnan(rewards).view(-1, group_size)
    for g in range(grouped.shape[0]):
        scores = rewards.view(-1, group_size)[g][valid[g]]
        if scores.numel() > 1 and scores.max() > scores.min():
            assert grouped[g][valid[g]].sum().abs() <= 1e-9 * max(1.0, grouped[g].abs().max())
        assert grouped[g].abs().max() <= cap


@settings(max_examples=100, deadline=None)
@given(grouped_rewards(), st.randoms(use_true_random=False))
def test_property_group_and_row_permutations_commute(data, rng):
    rewards, group_size, cap = data
    num_groups = rewards.numel() // group_size
    group_order = list(range(num_groups))
    rng.shuffle(group_order)
    rows = []
    for g in group_order:
        within = list(range(group_size))
        rng.shuffle(within)
        rows.extend(g * group_size + i for i in within)
    order = torch.tensor(rows)
    reference, fit, _ = beta_normalized_advantages(rewards, group_size, max_inv_density=cap)
    permuted, permuted_fit, _ = beta_normalized_advantages(rewards[order], group_size, max_inv_density=cap)
    torch.testing.assert_close(permuted, reference[order], atol=1e-9, rtol=1e-9)
    assert permuted_fit.alpha == pytest.approx(fit.alpha) and permuted_fit.beta == pytest.approx(fit.beta)


# Trainer end to end -----------------------------------------------------------------------------------------------
def test_bnpo_trains_the_builtin_task_and_logs_its_advantages(tiny_checkpoint, tmp_path):
    from transformers import AutoTokenizer

    from trl_ext.data import get_task

    task = get_task("arithmetic")
    args = BNPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=32,
        num_generations=8,
        max_completion_length=task.max_completion_length,
        learning_rate=3e-3,
        max_steps=3,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
        loss_type="bnpo",
    )
    trainer = BNPOTrainer(
        model=tiny_checkpoint,
        reward_funcs=task.reward_funcs,
        args=args,
        train_dataset=task.make_dataset(256, 0),
        processing_class=AutoTokenizer.from_pretrained(tiny_checkpoint),
    )
    captured = []
    original = trainer._generate_and_score_completions

    def capture(inputs):
        output = original(inputs)
        captured.append((trainer._last_rewards, output["advantages"].clone()))
        return output

    original_build = trainer.build_advantage_batch

    def build(inputs, output, rewards_per_func, mode):
        trainer._last_rewards = rewards_per_func.clone()
        return original_build(inputs, output, rewards_per_func, mode)

    trainer.build_advantage_batch = build
    trainer._generate_and_score_completions = capture
    trainer.train()

    assert trainer.loss_type == "bnpo"  # TRL's aggregation untouched
    logs = [entry for entry in trainer.state.log_history if "bnpo/alpha" in entry]
    assert len(logs) == 3 and all(entry["bnpo/alpha"] >= 1 for entry in logs)
    for rewards, advantages in captured:
        expected, _, _ = beta_normalized_advantages(rewards[:, 0].double(), 8)
        torch.testing.assert_close(advantages, expected.float(), atol=1e-6, rtol=0)
        # GRPO would give different advantages on any batch with signal.
        grpo, _ = grpo_advantages(rewards, torch.ones(1), 8)
        if expected.abs().sum() > 0:
            assert not torch.allclose(advantages, grpo, atol=1e-3)
    # The completions table shows the advantages the loss trained on.
    assert list(trainer._logs["advantages"])[-32:] == pytest.approx(captured[-1][1].tolist())
