"""DIVA-GRPO's pure pieces: the advantage (spec worked examples), the difficulty update, the store and the sampler."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trl_ext.advantages.diva import (
    DEFAULT_DIFFICULTY_CHANGES,
    DEFAULT_SCORE_RANGES,
    batch_zscore,
    difficulty_change,
    difficulty_updates,
    diva_advantages,
    validate_diva_fields,
)
from trl_ext.curriculum.difficulty import SLOT_KEY, DifficultyStore, ProblemRepeatSampler, VariantSlotDataset

# Spec §5: V=1, n=4; rows P original, P Gaussian variant, Q original, Q 2-step hint.
REWARDS = torch.tensor([1, 1, 0.1, 1, 0.1, 1, 0, 0.1, 0.1, 0.1, 0.1, 0, 1, 0.1, 1, 1], dtype=torch.float64)
IDS = ["P"] * 8 + ["Q"] * 8
DIFFICULTIES = torch.tensor([5.0] * 4 + [6.0] * 4 + [8.0] * 4 + [5.0] * 4, dtype=torch.float64)
LENGTHS = torch.tensor([3, 2, 6, 4, 6, 3, 5, 6, 6, 6, 5, 6, 2, 4, 3, 3], dtype=torch.float64)


def rows(values):
    return torch.tensor(values, dtype=torch.float64).reshape(-1)


def test_worked_example_responses_mode():
    parts = diva_advantages(REWARDS, 4, IDS, DIFFICULTIES)
    expected_local_z = rows(
        [[0.5, 0.5, -1.5, 0.5], [-0.4264, 1.4924, -0.6396, -0.4264], [0.5] * 3 + [-1.5], [0.5, -1.5, 0.5, 0.5]]
    )
    expected_global_z = rows(
        [
            [0.9334, 0.9334, -0.8829, 0.9334],
            [-0.8829, 0.9334, -1.0847, -0.8829],
            [-0.6808] * 3 + [-0.8903],
            [1.2046, -0.6808, 1.2046, 1.2046],
        ]
    )
    torch.testing.assert_close(parts.local_z, expected_local_z, atol=1e-4, rtol=0)
    torch.testing.assert_close(parts.global_z, expected_global_z, atol=1e-4, rtol=0)
    # Batch-normalised local part: sigma = sqrt(12/15); the Q original's all-low group is damped by RRB (x0.1).
    expected_local = rows(
        [
            [0.559, 0.559, -1.6771, 0.559],
            [-0.4767, 1.6686, -0.7151, -0.4767],
            [0.0559] * 3 + [-0.1677],
            [0.559, -1.6771, 0.559, 0.559],
        ]
    )
    torch.testing.assert_close(parts.local, expected_local, atol=1e-4, rtol=0)
    expected_global = rows(
        [
            [0.919, 0.919, -0.9608, 0.919],
            [-0.8693, 1.0157, -1.068, -0.8693],
            [-0.6066] * 3 + [-0.7932],
            [1.0732, -0.8188, 1.0732, 1.0732],
        ]
    )
    torch.testing.assert_close(parts.global_, expected_global, atol=1e-4, rtol=0)
    expected = rows(
        [
            [1.478, 1.478, -2.6378, 1.478],
            [-1.3461, 2.6842, -1.7831, -1.3461],
            [-0.5507] * 3 + [-0.9609],
            [1.6322, -2.4959, 1.6322, 1.6322],
        ]
    )
    torch.testing.assert_close(parts.advantages, expected, atol=1e-4, rtol=0)


def test_worked_example_batch_statistics_and_multipliers():
    valid = torch.ones(16, dtype=torch.bool)
    parts = diva_advantages(REWARDS, 4, IDS, DIFFICULTIES, difficulty_k=0.0, rrb_scale=1.0)
    # sigma of the local z-scores is sqrt(12/15) = 0.8944, of the global ones sqrt(14/15) = 0.9661.
    assert torch.isclose(parts.local_z.std(), torch.tensor(math.sqrt(12 / 15), dtype=torch.float64), atol=1e-4)
    assert torch.isclose(parts.global_z.std(), torch.tensor(math.sqrt(14 / 15), dtype=torch.float64), atol=1e-4)
    torch.testing.assert_close(parts.global_, batch_zscore(parts.global_z, valid), atol=1e-12, rtol=0)
    weighted = diva_advantages(REWARDS, 4, IDS, DIFFICULTIES, rrb_scale=1.0)
    multipliers = weighted.global_ / parts.global_
    # P original (Δd = -0.5): 0.9512 on positives, 1.0513 on negatives; Q hint (Δd = -1.5): 0.8607 / 1.1618.
    torch.testing.assert_close(multipliers[[0, 2]], rows([0.9512, 1.0513]), atol=1e-4, rtol=0)
    torch.testing.assert_close(multipliers[[4, 5]], rows([0.9512, 1.0513]), atol=1e-4, rtol=0)
    torch.testing.assert_close(multipliers[[8, 11]], rows([0.8607, 0.8607]), atol=1e-4, rtol=0)
    torch.testing.assert_close(multipliers[[12, 13]], rows([0.8607, 1.1618]), atol=1e-4, rtol=0)


def test_worked_example_reference_mode_with_padding():
    parts = diva_advantages(
        REWARDS, 4, IDS, DIFFICULTIES, batch_norm="reference", token_counts=LENGTHS, max_completion_length=8
    )
    expected = rows(
        [
            [2.4938, 2.4938, -3.3383, 2.4938],
            [-1.5873, 4.1772, -2.2091, -1.5873],
            [-0.6065] * 3 + [-1.1901],
            [2.7017, -3.0998, 2.7017, 2.7017],
        ]
    )
    torch.testing.assert_close(parts.advantages, expected, atol=1e-4, rtol=0)


def test_reference_mode_without_padding_equals_responses_mode():
    # "responses" is the reference statistic with T = 1 and every L = 1.
    responses = diva_advantages(REWARDS, 4, IDS, DIFFICULTIES)
    reference = diva_advantages(
        REWARDS, 4, IDS, DIFFICULTIES, batch_norm="reference", token_counts=torch.ones(16), max_completion_length=1
    )
    torch.testing.assert_close(reference.advantages, responses.advantages, atol=1e-12, rtol=0)


def test_worked_example_difficulty_update():
    # P: mean 4.3/8 = 0.5375 -> -1 -> 4; Q: 3.4/8 = 0.425 -> 0 -> stays 8.
    assert difficulty_updates(REWARDS, IDS, {"P": 5, "Q": 8}) == {"P": 4, "Q": 8}


@pytest.mark.parametrize(
    ("mean", "change"), [(0.0, 2), (0.05, 2), (0.3, 1), (0.5, 0), (0.7, -1), (1.0, -2), (0.06, 1), (0.69, -1)]
)
def test_difficulty_change_boundaries_are_inclusive_first_match(mean, change):
    assert difficulty_change(mean, DEFAULT_SCORE_RANGES, DEFAULT_DIFFICULTY_CHANGES) == change


@pytest.mark.parametrize(
    ("rewards", "boundary", "change"),
    [
        ([0.1] * 5 + [0.0] * 5, 0.05, 2),  # five 0.1 format rewards out of ten
        ([0.3] * 10, 0.3, 1),
        ([0.2, 0.8] * 5, 0.5, 0),
        ([0.6, 0.8] * 5, 0.7, -1),
    ],
    ids=["0.05", "0.3", "0.5", "0.7"],
)
def test_boundaries_reached_through_float32_rewards_keep_their_range(rewards, boundary, change):
    # Rewards arrive as float32: their float64 mean lands a few 1e-9 above the boundary it is in exact arithmetic.
    rewards32 = torch.tensor(rewards, dtype=torch.float32)
    mean = rewards32.double().mean().item()
    assert boundary < mean < boundary + 1e-7  # the case this test is about: just above the boundary
    updated = difficulty_updates(rewards32, ["p"] * len(rewards), {"p": 5})
    assert updated == {"p": 5 + change}
    # The slack is tiny: a mean clearly above the boundary takes the next range.
    next_change = DEFAULT_DIFFICULTY_CHANGES[[hi for _, hi in DEFAULT_SCORE_RANGES].index(boundary) + 1]
    assert difficulty_change(boundary + 1e-4) == next_change


def test_difficulty_change_outside_every_range_is_zero():
    assert difficulty_change(1.5) == 0
    assert difficulty_change(-0.2) == 0


def test_difficulty_update_clips_and_skips_unscorable_problems():
    rewards = torch.tensor([0.0, 0.0, 1.0, 1.0, float("nan"), float("nan")])
    updated = difficulty_updates(
        rewards, ["hard", "hard", "easy", "easy", "blank", "blank"], {"hard": 9, "easy": 1, "blank": 5}
    )
    assert updated == {"hard": 9, "easy": 1}  # +2 clipped at 9, -2 clipped at 1; "blank" has no scorable response


def test_constant_groups_are_exactly_zero():
    rewards = torch.full((10,), 0.1, dtype=torch.float64)
    parts = diva_advantages(rewards, 5, ["a"] * 10, torch.full((10,), 5.0))
    assert torch.equal(parts.local_z, torch.zeros(10, dtype=torch.float64))
    assert torch.equal(parts.global_z, torch.zeros(10, dtype=torch.float64))
    assert torch.equal(parts.advantages, torch.zeros(10, dtype=torch.float64))


def test_constant_row_group_stays_zero_after_batch_normalisation():
    # Row group 0 constant at 0.3 (not low reward); the rest vary. With "responses" its local part stays 0 up to
    # float64 rounding, because every group's z-scores sum to zero so the batch mean is zero.
    rewards = torch.tensor([0.3] * 4 + [0.0, 1.0, 0.0, 1.0] + [1.0, 0.0, 0.5, 0.2], dtype=torch.float64)
    parts = diva_advantages(rewards, 4, ["a"] * 4 + ["b"] * 8, torch.full((12,), 5.0))
    assert parts.local[:4].abs().max() < 1e-12


def test_grouping_is_by_id_not_position():
    # Permuting whole prompt-row blocks permutes the output the same way.
    block_order = [3, 1, 0, 2]
    permutation = torch.cat([torch.arange(4) + 4 * b for b in block_order])
    base = diva_advantages(REWARDS, 4, IDS, DIFFICULTIES).advantages
    permuted = diva_advantages(
        REWARDS[permutation], 4, [IDS[i] for i in permutation.tolist()], DIFFICULTIES[permutation]
    ).advantages
    torch.testing.assert_close(permuted, base[permutation], atol=1e-12, rtol=0)


def test_global_group_is_the_union_of_an_ids_rows_wherever_they_sit():
    # P's two rows split by Q's rows: same global z-scores as when adjacent.
    order = torch.cat([torch.arange(0, 4), torch.arange(8, 12), torch.arange(4, 8), torch.arange(12, 16)])
    parts = diva_advantages(REWARDS[order], 4, [IDS[i] for i in order.tolist()], DIFFICULTIES[order])
    reference = diva_advantages(REWARDS, 4, IDS, DIFFICULTIES)
    torch.testing.assert_close(parts.global_z, reference.global_z[order], atol=1e-12, rtol=0)


def test_no_weighting_when_k_is_zero_or_difficulties_are_equal():
    no_k = diva_advantages(REWARDS, 4, IDS, DIFFICULTIES, difficulty_k=0.0, rrb_scale=1.0)
    equal = diva_advantages(REWARDS, 4, IDS, torch.full((16,), 7.0), rrb_scale=1.0)
    unweighted = batch_zscore(no_k.global_z, torch.ones(16, dtype=torch.bool))
    torch.testing.assert_close(no_k.global_, unweighted, atol=1e-12, rtol=0)
    torch.testing.assert_close(equal.global_, unweighted, atol=1e-12, rtol=0)


def test_rrb_threshold_is_strict():
    # A group with all rewards < 0.15 is scaled by 0.1; one containing exactly 0.15 is not.
    low = torch.tensor([0.1, 0.0, 0.1, 0.0, 1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    at = torch.tensor([0.15, 0.0, 0.1, 0.0, 1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    ids, d = ["a"] * 4 + ["b"] * 4, torch.full((8,), 5.0)
    for rewards, scale in ((low, 0.1), (at, 1.0)):
        damped = diva_advantages(rewards, 4, ids, d)
        undamped = diva_advantages(rewards, 4, ids, d, rrb_scale=1.0)
        torch.testing.assert_close(damped.local[:4], scale * undamped.local[:4], atol=1e-12, rtol=0)
        torch.testing.assert_close(damped.global_[:4], scale * undamped.global_[:4], atol=1e-12, rtol=0)
        torch.testing.assert_close(damped.local[4:], undamped.local[4:], atol=1e-12, rtol=0)


def test_unscorable_rows_get_zero_and_do_not_enter_statistics():
    rewards = REWARDS.clone()
    rewards[[1, 9]] = float("nan")
    parts = diva_advantages(rewards, 4, IDS, DIFFICULTIES)
    assert torch.isfinite(parts.advantages).all()
    assert parts.advantages[1] == 0 and parts.advantages[9] == 0
    # The Q original's scorable rewards are 0.1, 0.1, 0: its local z-scores are those of a 3-response group.
    three = torch.tensor([0.1, 0.1, 0.0], dtype=torch.float64)
    expected = (three - three.mean()) / (three.std() + 1e-6)
    torch.testing.assert_close(parts.local_z[[8, 10, 11]], expected, atol=1e-12, rtol=0)


def test_all_unscorable_batch_is_zero():
    parts = diva_advantages(torch.full((8,), float("nan")), 4, ["a"] * 8, torch.full((8,), 5.0))
    assert torch.equal(parts.advantages, torch.zeros(8, dtype=torch.float64))


def test_reference_mode_accepts_zero_length_responses():
    lengths = LENGTHS.clone()
    lengths[[0, 5]] = 0
    parts = diva_advantages(
        REWARDS, 4, IDS, DIFFICULTIES, batch_norm="reference", token_counts=lengths, max_completion_length=8
    )
    assert torch.isfinite(parts.advantages).all()


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    num_rows=st.integers(1, 6),
    n=st.integers(2, 5),
    mode=st.sampled_from(["responses", "reference"]),
)
def test_finite_for_any_input(data, num_rows, n, mode):
    size = num_rows * n
    values = data.draw(
        st.lists(st.sampled_from([0.0, 0.1, 0.15, 0.5, 1.0, float("nan")]), min_size=size, max_size=size)
    )
    ids = [str(data.draw(st.integers(0, 2))) for _ in range(num_rows) for _ in range(n)]
    levels = [float(data.draw(st.integers(1, 9))) for _ in range(num_rows) for _ in range(n)]
    lengths = torch.tensor([data.draw(st.integers(0, 4)) for _ in range(size)], dtype=torch.float64)
    parts = diva_advantages(
        torch.tensor(values, dtype=torch.float64),
        n,
        ids,
        torch.tensor(levels),
        batch_norm=mode,
        token_counts=lengths,
        max_completion_length=4,
    )
    assert torch.isfinite(parts.advantages).all()
    assert (parts.advantages[torch.isnan(torch.tensor(values))] == 0).all()


def _config(**overrides):
    fields = dict(
        diva_num_variants=1,
        diva_difficulty_k=0.1,
        diva_rrb_threshold=0.15,
        diva_rrb_scale=0.1,
        diva_local_weight=1.0,
        diva_global_weight=1.0,
        diva_group_eps=1e-6,
        diva_batch_norm="responses",
        diva_min_difficulty=1,
        diva_max_difficulty=9,
        diva_initial_difficulty=5,
        diva_score_ranges=[list(r) for r in DEFAULT_SCORE_RANGES],
        diva_difficulty_changes=list(DEFAULT_DIFFICULTY_CHANGES),
        diva_warmup_steps=0,
    )
    fields.update(overrides)
    return SimpleNamespace(**fields)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("diva_batch_norm", "tokens", "diva_batch_norm must be one of"),
        ("diva_rrb_scale", 1.5, "diva_rrb_scale must be in"),
        ("diva_group_eps", 0.0, "diva_group_eps"),
        ("diva_difficulty_k", -1.0, "diva_difficulty_k"),
        ("diva_num_variants", -1, "diva_num_variants"),
        ("diva_initial_difficulty", 10, "diva_initial_difficulty must be an integer in \\[1, 9\\]"),
        ("diva_difficulty_changes", [1, 2], "diva_difficulty_changes"),
        ("diva_score_ranges", [[0.5, 0.1]], "diva_score_ranges"),
        ("diva_warmup_steps", -3, "diva_warmup_steps"),
        ("diva_difficulty_k", float("nan"), "diva_difficulty_k must be a finite number"),
    ],
)
def test_invalid_fields_raise_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        validate_diva_fields(_config(**{field: value}))


# --------------------------------------------------------------------------------------------------------------------
# Store, slot dataset and sampler
# --------------------------------------------------------------------------------------------------------------------


def test_store_levels_initial_row_difficulty_and_round_trip():
    store = DifficultyStore(initial=5, min_level=1, max_level=9)
    assert store.level("new") == 5
    assert store.level("new", row_difficulty=3) == 3
    store.update({"b": 12, "a": 0})
    assert store.levels == {"a": 1, "b": 9}
    assert store.level("a", row_difficulty=7) == 1  # a stored level wins over the row's initial level
    store.round_index = 4
    copy = DifficultyStore()
    copy.load_state_dict(store.state_dict())
    assert copy.levels == store.levels and copy.round_index == 4
    assert copy.digest() == store.digest()
    store.update({"a": 2})
    assert copy.digest() != store.digest()
    assert store.histogram()[2] == 0.5 and store.histogram()[9] == 0.5


def test_slot_dataset_rows():
    data = [{"id": i, "prompt": f"p{i}"} for i in range(3)]
    slots = VariantSlotDataset(data, num_slots=2)
    assert len(slots) == 6
    assert slots[3] == {"id": 1, "prompt": "p1", SLOT_KEY: 1}
    assert SLOT_KEY not in data[1]  # the underlying rows are not modified
    assert slots.__getitems__([5, 0, 3]) == [slots[5], slots[0], slots[3]]


def test_slot_dataset_batched_access_uses_the_datasets_batched_fetch():
    from datasets import Dataset

    data = Dataset.from_dict({"id": ["a", "b", "c"], "variants": [["x"], [], ["y", "z"]]})
    slots = VariantSlotDataset(data, num_slots=3)
    indices = [8, 8, 0, 4, 3]
    assert slots.__getitems__(indices) == [slots[i] for i in indices]


@pytest.mark.parametrize("shuffle", [True, False])
def test_sampler_keeps_problems_whole_and_honours_repeat_sampler_contract(shuffle):
    num_slots, generations, rows_per_batch, repeats = 3, 4, 6, 2
    sampler = ProblemRepeatSampler(
        list(range(7)), num_slots, generations, rows_per_batch, repeat_count=repeats, shuffle=shuffle, seed=1
    )
    indices = list(sampler)
    assert len(indices) == len(sampler) == (7 // 2) * rows_per_batch * generations * repeats
    block = rows_per_batch * generations
    seen_problems = []
    for start in range(0, len(indices), block * repeats):
        batches = [indices[start + r * block : start + (r + 1) * block] for r in range(repeats)]
        assert all(b == batches[0] for b in batches)  # the schedule repeats repeat_count times
        unique_rows = batches[0][::generations]
        for i, row in enumerate(unique_rows):  # each row is one contiguous block of num_generations
            assert batches[0][i * generations : (i + 1) * generations] == [row] * generations
        problems = [row // num_slots for row in unique_rows]
        for p in range(0, len(problems), num_slots):  # original and every variant, consecutive
            assert [row % num_slots for row in unique_rows[p : p + num_slots]] == list(range(num_slots))
            assert len(set(problems[p : p + num_slots])) == 1
        seen_problems += problems[::num_slots]
    assert len(set(seen_problems)) == len(seen_problems)  # every problem at most once per pass
    if not shuffle:
        assert seen_problems == list(range(6))


def test_sampler_is_identical_for_equal_seeds():
    make = lambda: list(ProblemRepeatSampler(list(range(20)), 2, 2, 4, shuffle=True, seed=3))  # noqa: E731
    assert make() == make()
    assert list(ProblemRepeatSampler(list(range(20)), 2, 2, 4, shuffle=True, seed=4)) != make()


def test_sampler_rejects_a_batch_that_splits_problems():
    with pytest.raises(ValueError, match="whole problems"):
        ProblemRepeatSampler(list(range(4)), num_slots=2, mini_repeat_count=2, batch_size=3)


def test_store_update_order_is_deterministic():
    updates = {str(i): random.Random(i).randint(1, 9) for i in range(50)}
    a, b = DifficultyStore(), DifficultyStore()
    a.update(updates)
    b.update(dict(reversed(list(updates.items()))))
    assert list(a.levels) == list(b.levels) and a.digest() == b.digest()
