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
