"""CalibAdv pure math (specs/calibadv.md): worked examples §5.1 and §5.2, text functions §5.3, degenerate inputs
(acceptance item 4), the multi-process split, and properties (finite output, observations exactly 0)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trl_ext.advantages.calibadv_math import (
    calibrate_advantages,
    calibrate_run_values,
    expand_run_values,
    group_advantages,
    group_step_scores,
    mask_runs,
    run_statistics,
    silver_documents,
    step_think_text,
    trajectory_step_scores,
    word_edit_similarity,
)
from trl_ext.rewards.qa import (
    answer_f1,
    build_transcript,
    extract_answer,
    is_valid_format,
    normalize_answer,
    token_f1,
)


def mask_from_runs(runs_per_row, length):
    mask = torch.zeros(len(runs_per_row), length)
    for i, runs in enumerate(runs_per_row):
        for start, end in runs:
            mask[i, start:end] = 1
    return mask


def row_from_spec(pieces, length):
    """[(value, count), ...] -> a list of `length` values."""
    row = [value for value, count in pieces for _ in range(count)]
    assert len(row) == length
    return row


# §5.1 -------------------------------------------------------------------------------------------------------------
RUNS_51 = [[(0, 3), (6, 9), (11, 14)], [(0, 4), (7, 12)], [(0, 2), (5, 7), (9, 15)]]
SCORES_51 = [[2 / 3, 0.0], [1 / 3], [1.0, 0.0]]


def test_worked_example_5_1_full_tensor():
    mask = mask_from_runs(RUNS_51, 16)
    advantages = group_advantages([1.0, 0.0, 0.0], num_generations=3, eps=1e-6)
    assert advantages.tolist() == pytest.approx([1.1547, -0.5773, -0.5773], abs=1e-4)

    tokens, result = calibrate_advantages(advantages, SCORES_51, [2, 1, 2], mask, num_generations=3)

    expected = torch.tensor(
        [
            row_from_spec([(1.1547, 3), (0, 3), (1.1547, 3), (0, 2), (2.1169, 3), (0, 2)], 16),
            row_from_spec([(-0.3849, 4), (0, 3), (-0.5773, 5), (0, 4)], 16),
            row_from_spec([(0, 2), (0, 3), (-0.5773, 2), (0, 2), (-0.5773, 6), (0, 1)], 16),
        ]
    )
    assert tokens.shape == (3, 16) and tokens.dtype == torch.float32
    torch.testing.assert_close(tokens, expected, atol=1e-4, rtol=0)
    assert result.kappa.tolist() == pytest.approx([1.8333], abs=1e-4)
    assert result.metrics["calibadv/segment_mismatch"] == 0
    assert result.metrics["calibadv/frac_neg_traj_calibrated"] == 1.0  # both negative rows have a scored step
    assert result.metrics["calibadv/kappa_mean"] == pytest.approx(1.8333, abs=1e-4)
    assert result.metrics["calibadv/neg_pos_mass_ratio"] == pytest.approx(6.3509 / 3.4641, abs=1e-4)


def test_worked_example_5_1_switches_off_give_plain_grpo():
    mask = mask_from_runs(RUNS_51, 16)
    advantages = group_advantages([1.0, 0.0, 0.0], 3)
    tokens, _ = calibrate_advantages(
        advantages, SCORES_51, [2, 1, 2], mask, 3, soft_penalty=False, answer_rebalance=False
    )
    torch.testing.assert_close(tokens, (advantages.unsqueeze(1) * mask).float())


# §5.2 -------------------------------------------------------------------------------------------------------------
TH0 = "who directed the film Inception"
F1_52 = [1.0, 0.8, 0.0, 0.0, 0.2]
VALID_52 = [True, True, True, False, True]
STEPS_52 = [
    [
        {"think": TH0, "docs": ["D1", "D2", "D3"]},
        {"think": "where was Christopher Nolan born", "docs": ["D4", "D5", "D6"]},
    ],
    [{"think": "director of Inception film", "docs": ["D1", "D7", "D8"]}],
    [
        {"think": TH0, "docs": ["D7", "D1", "D9"]},
        {"think": TH0 + " exactly", "docs": ["D4", "D5", "D10"]},
        {"think": "birthplace of Christopher Nolan", "docs": ["D4", "D11", "D12"]},
    ],
    [{"think": "anything", "docs": ["D1", "D2", "D3"]}],
    [("Inception director", ["D2", "D3", "D13"]), ("Nolan birthplace city", ["D2", "D3", "D5"])],
]
RUNS_52 = [
    [(0, 3), (6, 9), (12, 16)],
    [(0, 4), (8, 11)],
    [(0, 2), (5, 7), (10, 12), (15, 20)],
    [(0, 3), (6, 12)],
    [(0, 3), (6, 8), (11, 13)],
]
NUM_STEPS_52 = [2, 1, 3, 1, 2]


def test_worked_example_5_2_silver_set_and_step_scores():
    assert silver_documents(F1_52, VALID_52, STEPS_52) == {f"D{i}" for i in range(1, 7)}
    scores, metrics = group_step_scores(F1_52, VALID_52, STEPS_52, num_generations=5)
    assert scores[3] is None
    expected = [[1, 1], [1 / 3], [1 / 3, 0, 0], None, [2 / 3, 0]]
    for got, want in zip(scores, expected):
        assert (got is None) == (want is None)
        if want is not None:
            assert got == pytest.approx(want)
    assert metrics["calibadv/frac_groups_with_silver"] == 1.0
    assert metrics["calibadv/frac_steps_correct"] == pytest.approx(5 / 8)
    assert metrics["calibadv/step_score_mean"] == pytest.approx((2 + 1 / 3 + 1 / 3 + 2 / 3) / 8)
    assert metrics["calibadv/frac_trajectories_scored"] == pytest.approx(4 / 5)


@pytest.mark.parametrize(
    ("lam", "kappa", "answer0", "answer1"), [(1.0, 1.3333, 1.7056, 1.1371), (2.0, 0.6667, 0.8528, 0.5685)]
)
def test_worked_example_5_2_segment_advantages(lam, kappa, answer0, answer1):
    rewards = [f * v for f, v in zip(F1_52, VALID_52)]
    advantages = group_advantages(rewards, 5)
    assert advantages.tolist() == pytest.approx([1.2792, 0.8528, -0.8528, -0.8528, -0.4264], abs=1e-4)
    scores, _ = group_step_scores(F1_52, VALID_52, STEPS_52, 5)
    mask = mask_from_runs(RUNS_52, 20)
    tokens, result = calibrate_advantages(advantages, scores, NUM_STEPS_52, mask, 5, rebalance_lambda=lam)

    assert result.kappa.tolist() == pytest.approx([kappa], abs=1e-4)
    assert result.metrics["calibadv/frac_neg_traj_calibrated"] == pytest.approx(2 / 3)  # rows 2 and 4, not 3
    expected_runs = [
        [1.2792, 1.2792, answer0],
        [0.8528, answer1],
        [-0.5685, -0.8528, -0.8528, -0.8528],
        [-0.8528, -0.8528],
        [-0.1421, -0.4264, -0.4264],
    ]
    for i, runs in enumerate(RUNS_52):
        for (start, end), value in zip(runs, expected_runs[i]):
            segment = tokens[i, start:end]
            assert torch.allclose(segment, torch.full_like(segment, value), atol=1e-4), (i, start, segment)
    assert tokens[mask == 0].abs().max() == 0
    # After the rebalance the positive answer mass is the negative answer mass / lambda.
    answer_mask = torch.zeros_like(mask)
    for i, runs in enumerate(RUNS_52):
        start, end = runs[-1]
        answer_mask[i, start:end] = 1
    answer = tokens.double() * answer_mask
    assert float(lam * answer.clamp(min=0).sum()) == pytest.approx(float(-answer.clamp(max=0).sum()), rel=1e-5)


# §5.3 and text functions -------------------------------------------------------------------------------------------
def test_word_edit_similarity():
    assert word_edit_similarity(TH0, TH0 + " exactly") == pytest.approx(0.8333, abs=1e-4)
    assert word_edit_similarity("", "") == 0.0
    assert word_edit_similarity("a b", "") == 0.0
    assert word_edit_similarity("a b c", "a b c") == 1.0
    assert word_edit_similarity("a b c d", "a x c") == pytest.approx(0.5)  # one substitution, one deletion


def test_f1_examples():
    assert normalize_answer("The Beijing!") == "beijing"
    assert token_f1("The Beijing!", ["beijing"]) == 1.0
    assert token_f1("Christopher Nolan director", ["Christopher Nolan"]) == pytest.approx(0.8)
    assert token_f1("city of paris", ["Paris", "City of Paris"]) == 1.0
    assert token_f1("paris", []) == 0.0
    assert token_f1("the", ["the"]) == 0.0  # normalises to nothing: no match (decision)
    assert answer_f1("<think>x</think><search>q</search>", ["beijing"]) == 0.0  # no answer
    assert answer_f1("<answer>Rome</answer> ... <answer> The Beijing! </answer>", "beijing") == 1.0  # last answer
    assert extract_answer("no tags") is None


VALID = (
    "<think> a </think>\n<search> q </search>\n\n<information>Doc 1(Title: T) x</information>\n\n"
    "<think> b </think>\n<answer> y </answer>"
)


@pytest.mark.parametrize(
    "text",
    [
        "<think>a</think><answer>y</answer>",  # no search
        "<think>a</think> so <search>q</search><information>x</information><think>b</think><answer>y</answer>",
        "<search>q</search><information>x</information><think>b</think><answer>y</answer>",  # search before think
        VALID + " done",  # text after the answer
        VALID.replace("</think>\n<answer>", "\n<answer>"),  # unbalanced think
        VALID.replace("</information>", ""),  # unbalanced information
        "intro " + VALID,  # text before the first tag
        VALID.replace("<answer> y </answer>", ""),  # never answered
        VALID.replace("\n\n<think> b", "\n\n<search> q2 </search><think> b"),  # information -> search
    ],
)
def test_invalid_formats(text):
    assert not is_valid_format(text)


def test_valid_format_and_its_variants():
    assert is_valid_format(VALID)
    assert is_valid_format(VALID + "\n")  # trailing whitespace after </answer> is allowed (decision)
    assert is_valid_format("<|im_start|>" + VALID + "<|im_end|>")  # special tokens are removed first
    assert not is_valid_format(VALID, invalid_action=True)
    # prepend_think_token: the completion starts inside <think>; the transcript puts it back.
    completion = VALID[len("<think>") :]
    assert not is_valid_format(completion)
    assert is_valid_format(build_transcript(completion, prepend_think_token=True))
    assert build_transcript(completion, prepend_think_token=False) == completion


def test_step_think_text():
    assert step_think_text("<think> find the director </think>\n<search> q </search>") == "find the director"
    assert step_think_text("<search> q </search>") == ""
    assert step_think_text(" find it </think><search> q </search>", prepend_think_token=True) == "find it"


# Step-score rules ----------------------------------------------------------------------------------------------------
def test_step_scores_rules():
    silver = {"A", "B", "C"}
    # Duplicate doc inside a step counts once; n_docs counts every returned doc.
    assert trajectory_step_scores([("x", ["A", "A", "Z"])], silver) == [pytest.approx(1 / 3)]
    # Sharing exactly max_shared_docs (1) doc is not a repeat; sharing 2 is.
    assert trajectory_step_scores([("x y", ["A", "Z1", "Z2"]), ("p q", ["Z1", "B", "Z3"])], silver) == [
        pytest.approx(1 / 3),
        pytest.approx(1 / 3),
    ]
    assert trajectory_step_scores([("x y", ["A", "Z1", "Z2"]), ("p q", ["Z1", "Z2", "B"])], silver)[1] == 0.0
    assert trajectory_step_scores([("x y", ["A", "Z1", "Z2"]), ("p q", ["Z1", "Z2", "B"])], silver, max_shared_docs=2)[
        1
    ] == pytest.approx(1 / 3)
    # Similarity exactly at the threshold is not a repeat (strictly greater).
    assert trajectory_step_scores([("a b", ["Z"]), ("a c", ["B"])], silver) == [0.0, 1.0]
    # Empty retrieval: s = 0, no division.
    assert trajectory_step_scores([("x", []), ("y", ["A"])], silver) == [0.0, 1.0]


def test_silver_set_uses_only_the_best_eligible_trajectories():
    steps = [[("a", ["A"])], [("b", ["B"])], [("c", ["C"])], [("d", ["D"])]]
    # Trajectory 0 is invalid, 3 is below the threshold; among 1 and 2 only the best F1 (0.9) counts.
    assert silver_documents([1.0, 0.9, 0.75, 0.5], [False, True, True, True], steps) == {"B"}
    assert silver_documents([1.0, float("nan")], [False, True], steps[:2]) is None
    assert silver_documents([0.9, 0.9], [True, True], [[("a", [])], None]) == set()  # empty retrieval: empty set


# Degenerate inputs (acceptance item 4) -------------------------------------------------------------------------------
def _finite(tokens, result):
    assert torch.isfinite(tokens).all()
    assert all(math.isfinite(v) for v in result.metrics.values()), result.metrics


def test_batch_without_negative_advantage_tokens():
    mask = mask_from_runs([[(0, 2), (4, 6)], [(0, 3)], [(1, 2), (3, 5)], [(0, 4)]], 8)
    rewards = [0.5, 0.5, 1.0, 1.0]  # two all-equal groups of 2
    advantages = group_advantages(rewards, 2)
    assert advantages.abs().max() == 0
    tokens, result = calibrate_advantages(advantages, [[1.0], None, [0.5], None], [1, 0, 1, 0], mask, 2)
    _finite(tokens, result)
    assert tokens.abs().max() == 0
    assert result.metrics["calibadv/frac_answer_groups_zeroed"] == 1.0
    assert result.metrics["calibadv/neg_pos_mass_ratio"] == 0.0
    assert result.metrics["calibadv/kappa_mean"] == 0.0
    assert result.metrics["calibadv/frac_neg_traj_calibrated"] == 0.0
    # Positive-only advantages given directly (N = 0): answers zeroed, search runs keep A.
    tokens, result = calibrate_advantages(torch.tensor([1.0, 0.5]), [[1.0], None], [1, 0], mask[:2], 2)
    _finite(tokens, result)
    assert tokens[0].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    assert tokens[1].abs().max() == 0


def test_group_with_no_positive_advantage_zeroes_its_answers_only():
    mask = mask_from_runs([[(0, 2), (3, 5)], [(0, 3)]], 6)
    tokens, result = calibrate_advantages(torch.tensor([-1.0, -0.5]), [[0.25], None], [1, 0], mask, 2)
    _finite(tokens, result)
    assert tokens[0].tolist() == [-0.75, -0.75, 0, 0, 0, 0]  # soft penalty applied, answer zeroed (P = 0)
    assert tokens[1].abs().max() == 0
    assert result.answer_zeroed.tolist() == [True]


def test_mismatched_runs_get_no_soft_penalty_and_are_counted():
    # Row 0: 2 recorded steps but 2 runs (truncated); row 1: 0 steps but 3 runs; row 2 matches.
    mask = mask_from_runs([[(0, 2), (4, 6)], [(0, 1), (2, 3), (4, 6)], [(0, 2), (4, 6)]], 6)
    advantages = torch.tensor([-1.0, -1.0, 2.0])
    tokens, result = calibrate_advantages(advantages, [[0.5, 0.5], None, [1.0]], [2, 0, 1], mask, 3)
    _finite(tokens, result)
    assert result.segment_mismatch.tolist() == [True, True, False]
    assert result.metrics["calibadv/segment_mismatch"] == 2
    assert tokens[0, :2].tolist() == [-1.0, -1.0]  # no soft penalty
    assert tokens[0, 4:].tolist() == [-1.0, -1.0]  # last run is still the answer component (A < 0 kept)
    assert tokens[1, 4:].tolist() == [-1.0, -1.0]
    # kappa = (2 + 2) / (2 * 2) = 1 for the positive answer run.
    assert tokens[2, 4:].tolist() == [2.0, 2.0]


def test_empty_retrieval_results():
    steps = [[("a", [])], [("b", []), ("c", [])]]
    scores, metrics = group_step_scores([1.0, 0.0], [True, True], steps, 2)
    assert scores == [[0.0], [0.0, 0.0]]
    assert metrics["calibadv/frac_steps_correct"] == 0.0
    mask = mask_from_runs([[(0, 1), (2, 3)], [(0, 1), (2, 3), (4, 5)]], 5)
    tokens, result = calibrate_advantages(group_advantages([1.0, 0.0], 2), scores, [1, 2], mask, 2)
    _finite(tokens, result)


def test_unscorable_rows_and_single_row_groups():
    advantages = group_advantages([1.0, float("nan"), 0.0, float("nan"), 0.5, float("nan")], 3)
    # Group 0: rows 0 and 2 scorable; group 1: only row 4 scorable -> 0.
    assert advantages[1] == 0 and advantages[3:].abs().max() == 0
    assert advantages[0] > 0 > advantages[2]
    assert group_advantages([0.3, 0.9], 1).abs().max() == 0  # single-row groups (eval)
    # An unscorable row (NaN F1) is never eligible for the silver set.
    scores, _ = group_step_scores([float("nan"), 0.0], [True, True], [[("a", ["A"])], [("b", ["A"])]], 2)
    assert scores == [None, None]
    # NaN advantages are read as unscorable rows (0).
    mask = torch.ones(2, 3)
    tokens, result = calibrate_advantages(torch.tensor([float("nan"), 1.0]), [None, None], [0, 0], mask, 2)
    _finite(tokens, result)
    assert tokens[0].abs().max() == 0


def test_fully_masked_and_truncated_rows():
    mask = mask_from_runs([[], [(0, 3)], [(0, 2), (3, 4)], [(0, 6)]], 6)
    advantages = group_advantages([0.0, 1.0, 0.0, 1.0], 4)
    tokens, result = calibrate_advantages(advantages, [[1.0], None, [0.5, 0.5], None], [1, 0, 2, 0], mask, 4)
    _finite(tokens, result)
    assert tokens[0].abs().max() == 0  # fully masked
    assert result.num_runs.tolist() == [0, 1, 2, 1]
    assert result.metrics["calibadv/segment_mismatch"] == 2  # rows 0 and 2
    assert (tokens[mask == 0] == 0).all()
    empty = torch.zeros(2, 0)  # zero-width completions
    tokens, result = calibrate_advantages(torch.tensor([1.0, -1.0]), [None, None], [0, 0], empty, 2)
    assert tokens.shape == (2, 0)
    _finite(tokens, result)


def test_errors_name_the_field():
    mask = torch.ones(2, 3)
    with pytest.raises(ValueError, match="calibadv_rebalance_lambda"):
        calibrate_advantages(torch.tensor([1.0, -1.0]), [None, None], [0, 0], mask, 2, rebalance_lambda=0.0)
    with pytest.raises(ValueError, match="num_steps"):
        calibrate_advantages(torch.tensor([1.0, -1.0]), [[0.5], None], [0, 0], mask, 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibrate_advantages(torch.tensor([1.0, -1.0]), [[1.5], None], [1, 0], mask, 2)
    with pytest.raises(ValueError, match="num_generations"):
        calibrate_advantages(torch.tensor([1.0, -1.0, 0.0]), [None] * 3, [0] * 3, torch.ones(3, 3), 2)
    with pytest.raises(ValueError, match="calibadv_group_eps"):
        group_advantages([1.0, 0.0], 2, eps=0.0)
    with pytest.raises(ValueError, match="calibadv_silver_min_f1"):
        group_step_scores([1.0], [True], [[]], 1, min_f1=1.5)
    with pytest.raises(ValueError, match="calibadv_max_shared_docs"):
        group_step_scores([1.0], [True], [[]], 1, max_shared_docs=-1)


# Segments and the multi-process split ---------------------------------------------------------------------------------
def test_mask_runs_and_statistics():
    mask = mask_from_runs(RUNS_52, 20)
    assert mask_runs(mask) == [list(runs) for runs in RUNS_52]
    num_runs, answer_lengths = run_statistics(mask)
    assert num_runs.tolist() == [3, 2, 4, 2, 3]
    assert answer_lengths.tolist() == [4, 3, 5, 6, 2]


def test_split_over_processes_matches_single_process():
    rewards = [f * v for f, v in zip(F1_52, VALID_52)] + [0.0, 1.0, 0.0]
    runs = RUNS_52 + RUNS_51
    num_steps = NUM_STEPS_52 + [2, 1, 2]
    scores, _ = group_step_scores(F1_52, VALID_52, STEPS_52, 5)
    scores = scores + [None, [0.5], [1.0, 0.0]]
    # One group of 8 rows: the five of §5.2 and the three of §5.1.
    advantages = group_advantages(rewards, 8)
    full_mask = mask_from_runs(runs, 20)
    expected, _ = calibrate_advantages(advantages, scores, num_steps, full_mask, 8)

    # Two "processes" with their own widths: rows 0-2 (width 20) and rows 3-7 (width 16 after trimming).
    local = [(slice(0, 3), full_mask[0:3]), (slice(3, 8), mask_from_runs(runs[3:8], 16))]
    stats = [run_statistics(mask) for _, mask in local]
    num_runs = torch.cat([s[0] for s in stats])  # what accelerator.gather returns
    answer_lengths = torch.cat([s[1] for s in stats])
    result = calibrate_run_values(advantages, scores, num_steps, num_runs, answer_lengths, 8)
    for rows, mask in local:
        tokens = expand_run_values(result.run_values[rows], mask, result.num_runs[rows])
        torch.testing.assert_close(tokens, expected[rows, : mask.shape[1]])
        assert expected[rows, mask.shape[1] :].abs().sum() == 0


# Properties ---------------------------------------------------------------------------------------------------------
@st.composite
def batches(draw):
    group = draw(st.integers(1, 4))
    num_groups = draw(st.integers(1, 3))
    n, width = group * num_groups, draw(st.integers(0, 14))
    mask = torch.tensor(
        draw(st.lists(st.lists(st.booleans(), min_size=width, max_size=width), min_size=n, max_size=n))
    )
    mask = mask.reshape(n, width).float()
    reward = st.one_of(st.sampled_from([0.0, 1.0, float("nan")]), st.floats(0, 1))
    rewards = draw(st.lists(reward, min_size=n, max_size=n))
    num_runs = run_statistics(mask)[0].tolist()
    num_steps, scores = [], []
    for i in range(n):
        k = draw(st.sampled_from([max(num_runs[i] - 1, 0), draw(st.integers(0, 4))]))
        num_steps.append(k)
        score = st.one_of(st.sampled_from([0.0, 1 / 3, 2 / 3, 1.0]), st.floats(0, 1))
        scores.append(draw(st.one_of(st.none(), st.lists(score, min_size=k, max_size=k))))
    lam = draw(st.floats(0.1, 5.0))
    flags = draw(st.tuples(st.booleans(), st.booleans()))
    return group, mask, rewards, num_steps, scores, lam, flags


@settings(max_examples=150, deadline=None)
@given(batches())
def test_property_finite_and_observations_zero(batch):
    group, mask, rewards, num_steps, scores, lam, (soft, rebalance) = batch
    advantages = group_advantages(rewards, group)
    tokens, result = calibrate_advantages(
        advantages, scores, num_steps, mask, group, soft_penalty=soft, answer_rebalance=rebalance, rebalance_lambda=lam
    )
    _finite(tokens, result)
    assert (tokens[mask == 0] == 0).all()
    runs = mask_runs(mask)
    for i, row_runs in enumerate(runs):
        a = float(advantages[i])
        for start, end in row_runs[:-1]:  # search runs
            values = tokens[i, start:end].double()
            if a >= 0 or not soft:
                assert torch.allclose(values, torch.full_like(values, a))
            else:  # negative: scaled by (1 - s) in [0, 1], never flips sign or grows
                assert (values <= 0).all() and (values >= a - 1e-6).all()
    if rebalance:
        for g in range(len(rewards) // group):
            answer = [
                float(tokens[i, runs[i][-1][0] : runs[i][-1][1]].double().sum())
                for i in range(g * group, (g + 1) * group)
                if runs[i]
            ]
            positive, negative = sum(v for v in answer if v > 0), -sum(v for v in answer if v < 0)
            if not result.answer_zeroed[g]:
                assert lam * positive == pytest.approx(negative, rel=1e-4, abs=1e-5)
            else:
                assert positive == negative == 0
