"""A real 2-process CPU run (gloo) against a 1-process run on the same global batch.

``tests/scripts/distributed_step.py`` trains one step on a fixed global batch (16 completions, 4 groups whose
rewards differ across groups; completions come from a table, nothing is sampled) and records, on every process,
what the advantage seam and the loss saw. The same script runs once with 2 processes (8 rows each) and once with
1 process (16 rows). Because the estimator sees the gathered batch, every advantage must be the single-process
one; because DDP averages gradients, the averaged loss and the gradients must match where the aggregation allows:

* ``loss_type="dapo"`` divides the local token sum by ``num_items_in_batch / num_processes`` (global token count):
  the mean over processes of the local losses is the global token mean, exactly, whatever the token counts;
* ``loss_type="grpo"`` averages per-sequence means over the local batch: with equal numbers of sequences per process
  (8 and 8 here) the mean of the local means is the global mean, exactly.

(``bnpo`` divides by the *local* token count, so it would match only with equal token counts; not asserted.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from twoproc import launch_two_processes, run_checked

SCRIPT = Path(__file__).parent / "scripts" / "distributed_step.py"
CONFIGS = ("dapo_group", "grpo_batch", "token_dapo", "bnpo_decomposed")
GLOBAL_BATCH = 16
TIMEOUT_S = 240


def _load(directory: Path, config: str, rank: int) -> dict:
    return torch.load(directory / config / f"rank{rank}.pt", weights_only=False)


@pytest.fixture(scope="module")
def runs(tiny_checkpoint, tmp_path_factory):
    """Records of the 2-process run (list of two dicts) and the 1-process run (one dict), per config."""
    root = tmp_path_factory.mktemp("distributed")
    single_dir, multi_dir = root / "single", root / "multi"
    common = ["--checkpoint", tiny_checkpoint, "--configs", ",".join(CONFIGS)]
    run_checked(
        [sys.executable, str(SCRIPT), "--out", str(single_dir), "--per-device-batch", str(GLOBAL_BATCH), *common],
        TIMEOUT_S,
    )
    # Two real processes; the records' `num_processes` below guard against a silent single-process run.
    launch_two_processes(
        str(SCRIPT), "--out", str(multi_dir), "--per-device-batch", str(GLOBAL_BATCH // 2), *common, timeout=TIMEOUT_S
    )
    return {
        config: ([_load(multi_dir, config, rank) for rank in (0, 1)], _load(single_dir, config, 0))
        for config in CONFIGS
    }


@pytest.mark.parametrize("config", CONFIGS)
def test_two_processes_hold_the_global_batch_of_one(runs, config):
    ranks, single = runs[config]
    assert [r["num_processes"] for r in ranks] == [2, 2] and single["num_processes"] == 1
    assert [r["process_slice"] for r in ranks] == [(0, 8), (8, 16)]
    assert single["process_slice"] == (0, GLOBAL_BATCH)
    for key in ("prompts", "ids", "completions"):
        assert ranks[0][key] + ranks[1][key] == single[key], key
    # The batch is what the test relies on: 4 groups whose mean rewards differ.
    group_means = single["rewards_per_func"].sum(1).view(-1, 4).mean(1)
    assert len(set(group_means.tolist())) == 4
    # Gathered facts are the same on every process and equal to the single-process ones.
    for rank in ranks:
        torch.testing.assert_close(rank["rewards_per_func"], single["rewards_per_func"], atol=0, rtol=0)
        assert rank["ids_gathered"] == single["ids_gathered"]
        for key in ("completion_mask", "completion_lengths"):
            if single[key] is not None:
                torch.testing.assert_close(rank[key], single[key], atol=0, rtol=0, msg=key)


@pytest.mark.parametrize("config", ["dapo_group", "grpo_batch", "bnpo_decomposed"])
def test_sequence_advantages_match_single_process(runs, config):
    ranks, single = runs[config]
    for rank in ranks:
        torch.testing.assert_close(rank["full_advantages"], single["full_advantages"], atol=1e-6, rtol=0)
    local = torch.cat([rank["local_advantages"] for rank in ranks])
    torch.testing.assert_close(local, single["local_advantages"], atol=1e-6, rtol=0)
    assert single["local_advantages"].abs().max() > 0.1


def test_batch_scaling_uses_the_global_std(runs):
    # Same rewards, different normaliser: the batch-scaled advantages differ from the group-scaled ones, so the
    # match above really exercised a batch-wide statistic.
    group = runs["dapo_group"][1]["local_advantages"]
    batch = runs["grpo_batch"][1]["local_advantages"]
    assert not torch.allclose(group, batch, atol=1e-3)


def test_token_level_advantages_match_single_process(runs):
    ranks, single = runs["token_dapo"]
    expected = single["local_advantages"]
    assert expected.dim() == 2
    for rank in ranks:
        torch.testing.assert_close(rank["full_advantages"], single["full_advantages"], atol=1e-6, rtol=0)
    widths = [rank["local_advantages"].size(1) for rank in ranks]
    # The processes' local completion widths differ, so cutting the gathered width back to the local one matters.
    assert widths[0] != widths[1] and max(widths) == expected.size(1)
    for rank_index, rank in enumerate(ranks):
        rows = slice(*rank["process_slice"])
        width = rank["local_advantages"].size(1)
        assert rank["local_advantages"].shape == rank["local_completion_mask"].shape
        torch.testing.assert_close(rank["local_advantages"], expected[rows, :width], atol=1e-6, rtol=0)
        assert torch.all(expected[rows, width:] == 0), rank_index
    assert expected.abs().max() > 0.1


@pytest.mark.parametrize("config", CONFIGS)
def test_averaged_loss_and_gradients_match_single_process(runs, config):
    ranks, single = runs[config]
    # One micro-batch per process and step (gradient_accumulation_steps=1).
    assert all(len(r["losses"]) == 1 for r in ranks) and len(single["losses"]) == 1
    mean_loss = sum(r["losses"][0] for r in ranks) / 2
    assert mean_loss == pytest.approx(single["losses"][0], abs=1e-6)
    for rank in ranks:
        assert rank["logged_loss"] == pytest.approx(single["logged_loss"], abs=1e-6)
    if config != "grpo_batch":  # grpo's per-group-centred loss is ~0 on-policy; dapo's is not
        assert abs(ranks[0]["losses"][0] - ranks[1]["losses"][0]) > 1e-3

    expected = single["grads"]
    assert expected and max(g.abs().max().item() for g in expected.values()) > 1e-2
    for rank in ranks:
        assert sorted(rank["grads"]) == sorted(expected)
        for name, grad in expected.items():
            # DDP all-reduced: both processes hold the average, which is the single-process gradient.
            torch.testing.assert_close(rank["grads"][name], grad, atol=1e-6, rtol=0, msg=name)
    for name in expected:
        torch.testing.assert_close(ranks[0]["grads"][name], ranks[1]["grads"][name], atol=0, rtol=0, msg=name)
