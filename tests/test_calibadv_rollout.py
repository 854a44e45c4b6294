"""The CalibAdv multi-turn search-agent rollout (specs/calibadv.md §2.2, §3.2; acceptance items 6 and issue item 2).

A real tiny Qwen2 runs transformers ``generate`` through the production path; a ``ScriptedTurns`` logits processor
makes it write scripted turns (text past the stop strings included, to check the cuts), and a fake retriever records
its calls.
"""

from __future__ import annotations

import math
import threading

import pytest
import torch
from calibadv_helpers import FakeRetriever, ScriptedTurns, deepsearch_checkpoint_fixture  # noqa: F401  (fixture)

from trl_ext.generation.transformers_generate import TransformersBackend
from trl_ext.rewards.qa import is_valid_format, qa_f1_format_score
from trl_ext.rollout.search_agent import (
    INVALID_ACTION_OBSERVATION,
    STOP_STRINGS,
    SearchAgentRollout,
    parse_action,
)


@pytest.fixture(scope="module")
def model_and_tokenizer(deepsearch_checkpoint):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = deepsearch_checkpoint
    model = AutoModelForCausalLM.from_pretrained(path)
    model.eval()
    return model, AutoTokenizer.from_pretrained(path)


def rollout_for(tokenizer, scripts, retriever=None, prepend=False, **kwargs):
    retriever = FakeRetriever() if retriever is None else retriever
    processor = ScriptedTurns(tokenizer, scripts, prepend_think_token=prepend)
    return SearchAgentRollout(
        retriever, prepend_think_token=prepend, logits_processors=[processor], **kwargs
    ), retriever


def run(model, tokenizer, rollout, prompts, max_completion_length=600, seed=0):
    torch.manual_seed(seed)
    return rollout.generate(prompts, model, tokenizer, max_completion_length=max_completion_length)


def information(queries_docs, think=""):
    """The observation text the rollout must append for one search."""
    query, k = queries_docs
    body = "\n".join(f"Doc {i + 1}(Title: {query}) text of {query} number {i}" for i in range(k))
    return f"\n\n<information>{body}</information>\n\n{think}"


def check_masks(tokenizer, out, row, turns, observations):
    """completion = turns and observations interleaved, env_mask 1 exactly on the turns, log-prob 0 on observations."""
    ids, mask, logprobs = out["completion_ids"][row], out["env_mask"][row], out["logprobs"][row]
    assert len(ids) == len(mask) == len(logprobs)
    expected_ids, expected_mask = [], []
    for k, turn in enumerate(turns):
        turn_ids = tokenizer.encode(turn, add_special_tokens=False)
        expected_ids += turn_ids
        expected_mask += [1] * len(turn_ids)
        if k < len(observations):
            obs_ids = tokenizer.encode(observations[k], add_special_tokens=False)
            expected_ids += obs_ids
            expected_mask += [0] * len(obs_ids)
    assert ids == expected_ids
    assert mask == expected_mask
    assert all(lp == 0.0 for lp, m in zip(logprobs, mask, strict=True) if m == 0)
    assert all(math.isfinite(lp) for lp in logprobs)


def test_completion_is_turns_and_observations_in_order(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    scripts = {
        "Q1?\n": [
            "<think>a b</think>\n<search> alpha </search> junk after the stop",
            "<think>c</think>\n<search>beta</search>\n",
            "<think>d</think>\n<answer> x y </answer> more junk",
        ],
        "Q2?\n": ["<think>e</think>\n<search> gamma </search>", "<think>f</think>\n<answer>z</answer>"],
    }
    rollout, retriever = rollout_for(tokenizer, scripts, max_turns=3, top_k=2)
    out = run(model, tokenizer, rollout, ["Q1?\n", "Q2?\n"])

    turns1 = [
        "<think>a b</think>\n<search> alpha </search>",  # cut right after </search>
        "<think>c</think>\n<search>beta</search>",
        "<think>d</think>\n<answer> x y </answer>",  # cut right after </answer>
    ]
    obs1 = [information(("alpha", 2)), information(("beta", 2))]
    check_masks(tokenizer, out, 0, turns1, obs1)
    expected = turns1[0] + obs1[0] + turns1[1] + obs1[1] + turns1[2]
    assert tokenizer.decode(out["completion_ids"][0]) == expected == out["calibadv_transcript"][0]
    assert out["calibadv_steps"][0] == [
        {"think": "a b", "docs": ["alpha-0", "alpha-1"]},
        {"think": "c", "docs": ["beta-0", "beta-1"]},
    ]
    assert out["calibadv_turns"] == [3, 2]
    assert out["calibadv_invalid_action"] == [False, False] and out["calibadv_truncated"] == [False, False]
    turns2 = ["<think>e</think>\n<search> gamma </search>", "<think>f</think>\n<answer>z</answer>"]
    check_masks(tokenizer, out, 1, turns2, [information(("gamma", 2))])

    # One retriever call per turn with every query of the turn (stripped), top_k documents each.
    assert retriever.calls == [(["alpha", "gamma"], 2), (["beta"], 2)]
    # The prompt ids are the plain prompt, as TRL tokenizes it.
    assert out["prompt_ids"] == [tokenizer("Q1?\n")["input_ids"], tokenizer("Q2?\n")["input_ids"]]
    # The transcript is format-valid and scores F1 against the gold answer.
    assert qa_f1_format_score(out["calibadv_transcript"][0], ["x y"]) == (1.0, True)


def test_search_in_final_turn_is_not_executed_and_turn_limit_holds(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    turns = [f"<think>t{k}</think>\n<search> q{k} </search>" for k in range(1, 6)]
    for max_turns in (1, 2):
        rollout, retriever = rollout_for(tokenizer, {"Q?\n": turns}, max_turns=max_turns, top_k=1)
        out = run(model, tokenizer, rollout, ["Q?\n"])
        assert out["calibadv_turns"] == [max_turns + 1]
        assert [call[0] for call in retriever.calls] == [[f"q{k}"] for k in range(1, max_turns + 1)]
        assert len(out["calibadv_steps"][0]) == max_turns
        # The final turn's search is generated but not executed: the completion ends with it, no observation.
        observations = [information((f"q{k}", 1)) for k in range(1, max_turns + 1)]
        check_masks(tokenizer, out, 0, turns[: max_turns + 1], observations)
        assert out["calibadv_transcript"][0].endswith(turns[max_turns])
        assert out["calibadv_invalid_action"] == [False]
        assert not is_valid_format(out["calibadv_transcript"][0])  # never answered


def test_invalid_action_appends_the_observation_and_ends_the_trajectory(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    scripts = {
        "Q1?\n": ["<think>no action</think> then eos", "<think>never</think>\n<answer>x</answer>"],
        "Q2?\n": ["<think>" + "w" * 60],  # reaches the per-turn limit before any stop string
        "Q3?\n": ["<think>a</think>\n<answer>broken</search>"],  # a stop string without a valid action
    }
    rollout, retriever = rollout_for(tokenizer, scripts, max_turns=2, max_tokens_per_turn=40)
    out = run(model, tokenizer, rollout, list(scripts))
    generated = [
        "<think>no action</think> then eos",
        ("<think>" + "w" * 60)[:40],
        "<think>a</think>\n<answer>broken</search>",
    ]
    for row, turn in enumerate(generated):
        check_masks(tokenizer, out, row, [turn, ""], [INVALID_ACTION_OBSERVATION])
        assert out["calibadv_transcript"][row] == turn + INVALID_ACTION_OBSERVATION
    assert "My previous action is invalid." in INVALID_ACTION_OBSERVATION
    assert out["calibadv_invalid_action"] == [True, True, True]
    assert out["calibadv_turns"] == [1, 1, 1]
    assert out["calibadv_steps"] == [[], [], []]
    assert retriever.calls == []
    assert qa_f1_format_score(out["calibadv_transcript"][0], ["x"], invalid_action=True) == (0.0, False)


@pytest.mark.parametrize("conversational", [False, True])
def test_prepend_think_token(model_and_tokenizer, conversational):
    model, tokenizer = model_and_tokenizer
    # The model starts every turn inside <think>: the scripts never write the opening tag.
    turns = ["first step</think>\n<search> alpha </search>", "second</think>\n<answer> paris </answer>"]
    prompt = "Q1?\n"
    rollout, retriever = rollout_for(tokenizer, {prompt: turns}, prepend=True, max_turns=2, top_k=1)
    prompts = [[{"role": "user", "content": prompt}]] if conversational else [prompt]
    out = run(model, tokenizer, rollout, prompts)

    prompt_text = tokenizer.decode(out["prompt_ids"][0])
    if conversational:
        prompt = tokenizer.apply_chat_template(prompts[0], add_generation_prompt=True, tokenize=False)
    assert prompt_text == prompt + "<think>"
    observation = information(("alpha", 1), think="<think>")
    check_masks(tokenizer, out, 0, turns, [observation])
    completion = tokenizer.decode(out["completion_ids"][0])
    assert completion.count("<information>") == 1 and observation.endswith("<think>")
    # Every observation ends with <think>, which is never generated.
    generated = [t for t, m in zip(out["completion_ids"][0], out["env_mask"][0], strict=True) if m]
    assert "<think>" not in tokenizer.decode(generated)
    transcript = out["calibadv_transcript"][0]
    assert transcript == "<think>" + completion
    assert qa_f1_format_score(transcript, ["Paris"]) == (1.0, True)
    assert not is_valid_format(completion)  # without the leading <think> the format check would fail
    assert out["calibadv_steps"][0] == [{"think": "first step", "docs": ["alpha-0"]}]


def test_token_budget_and_observation_truncation(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    turns = ["<think>a</think>\n<search> alpha </search>", "<think>b</think>\n<answer> x </answer>"]
    # Observation cut to 60 tokens (one token per character here): the document text is shortened, the tags stay.
    rollout, _ = rollout_for(tokenizer, {"Q?\n": turns}, max_turns=2, top_k=3, max_obs_tokens=60)
    out = run(model, tokenizer, rollout, ["Q?\n"])
    mask, ids = out["env_mask"][0], out["completion_ids"][0]
    observation = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if not m])
    full_body = information(("alpha", 3))[len("\n\n<information>") : -len("</information>\n\n")]
    body_length = 60 - len("\n\n<information>") - len("</information>\n\n")
    assert observation == "\n\n<information>" + full_body[:body_length] + "</information>\n\n"
    assert is_valid_format(out["calibadv_transcript"][0]) and out["calibadv_truncated"] == [False]

    # Total budget: the completion never exceeds max_completion_length; the trajectory is marked truncated.
    for budget in (20, 50, 70):
        rollout, _ = rollout_for(tokenizer, {"Q?\n": turns}, max_turns=2, top_k=3)
        out = run(model, tokenizer, rollout, ["Q?\n"], max_completion_length=budget)
        assert len(out["completion_ids"][0]) == budget
        assert out["calibadv_truncated"] == [True] and out["calibadv_invalid_action"] == [False]


def test_empty_retrieval_gives_an_empty_observation(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    turns = ["<think>a</think>\n<search> nothing </search>", "<think>b</think>\n<answer> x </answer>"]
    rollout, _ = rollout_for(tokenizer, {"Q?\n": turns}, retriever=FakeRetriever(empty=["nothing"]), max_turns=2)
    out = run(model, tokenizer, rollout, ["Q?\n"])
    check_masks(tokenizer, out, 0, turns, ["\n\n<information></information>\n\n"])
    assert out["calibadv_steps"][0] == [{"think": "a", "docs": []}]


def test_sampling_logprobs_are_those_of_the_sampling_distribution(model_and_tokenizer):
    from transformers import GenerationConfig

    model, tokenizer = model_and_tokenizer
    # Scripted choice: two alternatives diverge after "<think>", so that token has log-prob log(1/2), others 0.
    scripts = {"Q?\n": [["<think>a</think>\n<answer>1</answer>", "<think>b</think>\n<answer>2</answer>"]]}
    rollout, _ = rollout_for(tokenizer, scripts, max_turns=1)
    out = run(model, tokenizer, rollout, ["Q?\n"] * 4)
    for logprobs in out["logprobs"]:
        assert logprobs[7] == pytest.approx(math.log(0.5))
        assert all(abs(lp) < 1e-6 for i, lp in enumerate(logprobs) if i != 7)

    # Unconstrained sampling at temperature 0.7 with top-k 5: the recorded log-probs are log-softmax of the top-k
    # filtered logits / T, which a forward pass reproduces.
    rollout = SearchAgentRollout(FakeRetriever(), max_turns=1, max_tokens_per_turn=12)
    config = GenerationConfig(do_sample=True, temperature=0.7, top_k=5, top_p=1.0, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(1)
    out = rollout.generate(
        ["Q?\n", "Another?\n"], model, tokenizer, max_completion_length=64, generation_config=config
    )
    for row in range(2):
        prompt, completion, mask = out["prompt_ids"][row], out["completion_ids"][row], out["env_mask"][row]
        generated = [t for t, m in zip(completion, mask, strict=True) if m]
        assert generated and generated == completion[: len(generated)]  # one turn, then the invalid-action observation
        with torch.no_grad():
            logits = model(torch.tensor([prompt + generated])).logits[0, len(prompt) - 1 : -1].double() / 0.7
        kth = logits.topk(5, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
        expected = logits.log_softmax(-1).gather(1, torch.tensor(generated)[:, None]).squeeze(1)
        recorded = torch.tensor(out["logprobs"][row][: len(generated)], dtype=torch.float64)
        torch.testing.assert_close(recorded, expected, atol=2e-5, rtol=0)


class TextGenerator:
    """A TurnGenerator without a model: returns fixed token ids (to check the cuts)."""

    def __init__(self, tokenizer, texts, extra_ids=()):
        self.tokenizer, self.texts, self.extra_ids = tokenizer, texts, list(extra_ids)
        self.calls = []

    def __call__(self, contexts, max_new_tokens, rows, turn):
        self.calls.append((len(contexts), max_new_tokens, list(rows), turn))
        out = []
        for _ in contexts:
            ids = self.tokenizer.encode(self.texts[turn - 1], add_special_tokens=False) + self.extra_ids
            out.append((ids, [-0.5] * len(ids)))
        return out


def test_turn_cut_drops_eos_and_what_follows_and_keeps_the_stop_token(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    eos = tokenizer.eos_token_id
    texts = ["<think>a</think><search>q</search>more", "<think>b</think>text", "<think>c</think><answer>y</answer>"]
    tail = [eos] + tokenizer.encode("<answer>late</answer>", add_special_tokens=False)
    generator = TextGenerator(tokenizer, texts, extra_ids=tail)
    rollout = SearchAgentRollout(FakeRetriever(), max_turns=3, top_k=1)
    prompt_ids = [tokenizer("P1\n")["input_ids"], tokenizer("P2\n")["input_ids"]]
    out = rollout.run(prompt_ids, tokenizer, generator, max_completion_length=500, row_offset=10)
    first = tokenizer.decode(out["completion_ids"][0])
    # turn 1 cut after </search>; turn 2 cut at EOS (dropped, the later <answer> is never seen): invalid action.
    assert first == "<think>a</think><search>q</search>" + information(("q", 1)) + "<think>b</think>text" + (
        INVALID_ACTION_OBSERVATION
    )
    assert out["calibadv_invalid_action"] == [True, True]
    assert [lp for lp, m in zip(out["logprobs"][0], out["env_mask"][0], strict=True) if m] == [-0.5] * (
        len("<think>a</think><search>q</search>") + len("<think>b</think>text")
    )
    assert generator.calls[0][2] == [10, 11] and generator.calls[1][3] == 2


def test_a_trajectory_with_no_token_gets_one_masked_eos(model_and_tokenizer):
    # An EOS as the first sampled token, and a tokenizer that encodes the invalid-action observation to no token
    # (seen with a word-level tokenizer): TRL's completion bookkeeping needs one token (IndexError before).
    _, tokenizer = model_and_tokenizer
    eos = tokenizer.eos_token_id

    class NoObservationTokens:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __call__(self, text, **kwargs):
            return {"input_ids": []}

    generator = TextGenerator(tokenizer, [""], extra_ids=[eos, 5, 6])
    rollout = SearchAgentRollout(FakeRetriever(), max_turns=1, top_k=1)
    out = rollout.run([[3, 4]], NoObservationTokens(tokenizer), generator, max_completion_length=50)
    assert out["completion_ids"] == [[eos]] and out["env_mask"] == [[0]] and out["logprobs"] == [[0.0]]
    assert out["calibadv_invalid_action"] == [True]


def test_parse_action_takes_the_first_complete_tag():
    assert parse_action("<think>x</think><search> q </search>") == ("search", " q ")
    assert parse_action("<answer>a</answer><search>q</search>") == ("answer", "a")
    assert parse_action("<search>q</answer>") == (None, "")


def test_invalid_settings_name_the_field():
    with pytest.raises(ValueError, match="calibadv_max_turns"):
        SearchAgentRollout(FakeRetriever(), max_turns=0)
    with pytest.raises(ValueError, match="calibadv_topk"):
        SearchAgentRollout(FakeRetriever(), top_k=0)
    with pytest.raises(ValueError, match="retriever"):
        SearchAgentRollout(object())


# ---------------------------------------------------------------------------------------------------------------------
# Lockstep turns (collective generators): two simulated processes in two threads
# ---------------------------------------------------------------------------------------------------------------------


class RowScriptGenerator:
    """Row ``r`` searches until turn ``turns[r]``, where it answers; records every call. ``collective`` as given."""

    def __init__(self, tokenizer, turns, collective):
        self.tokenizer, self.turns, self.collective = tokenizer, turns, collective
        self.calls = []

    def __call__(self, contexts, max_new_tokens, rows, turn):
        assert len(contexts) == len(rows)
        self.calls.append((list(rows), turn))
        out = []
        for row in rows:
            action = f"<answer>a{row}</answer>" if turn >= self.turns[row] else f"<search>q{row} t{turn}</search>"
            ids = self.tokenizer.encode(f"<think>r{row}</think>{action}", add_special_tokens=False)
            out.append((ids, [-0.25] * len(ids)))
        return out


class ThreadedOr:
    """``any_active`` for simulated processes in threads: every thread's flag is published, then OR-ed."""

    def __init__(self, world_size):
        self.barrier = threading.Barrier(world_size, timeout=20)
        self.flags = [False] * world_size
        self.calls = [0] * world_size

    def for_rank(self, rank):
        def any_active(flag):
            self.calls[rank] += 1
            self.flags[rank] = flag
            self.barrier.wait()  # every flag of this round is written
            result = any(self.flags)
            self.barrier.wait()  # every flag of this round is read before the next round writes
            return result

        return any_active


# Two processes of two rows each; the second process needs two more turns than the first.
ROW_TURNS = {0: 1, 1: 2, 2: 4, 3: 3}


def _two_process_rollout(tokenizer, collective, lockstep):
    rollout = SearchAgentRollout(FakeRetriever(), max_turns=4, top_k=1)
    prompt_ids = [tokenizer(p)["input_ids"] for p in ("A\n", "B\n")]
    generators = [RowScriptGenerator(tokenizer, ROW_TURNS, collective) for _ in range(2)]
    any_or = ThreadedOr(2)
    outputs = [None, None]

    def process(rank):
        outputs[rank] = rollout.run(
            prompt_ids,
            tokenizer,
            generators[rank],
            max_completion_length=500,
            row_offset=2 * rank,
            any_active=any_or.for_rank(rank) if lockstep else None,
        )

    threads = [threading.Thread(target=process, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    return outputs, generators, any_or


def test_collective_generator_is_called_equally_often_on_every_process(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    free, free_generators, _ = _two_process_rollout(tokenizer, collective=True, lockstep=False)
    locked, locked_generators, any_or = _two_process_rollout(tokenizer, collective=True, lockstep=True)

    # Without lockstep the processes make different numbers of generator calls (what hangs a synchronised generate).
    assert [len(g.calls) for g in free_generators] == [2, 4]
    # With lockstep both make 4 (the most any process needs), and one OR per turn plus the final one that ends it.
    assert [len(g.calls) for g in locked_generators] == [4, 4]
    assert any_or.calls == [5, 5]
    assert locked_generators[0].calls == [([0, 1], 1), ([1], 2), ([], 3), ([], 4)]
    assert locked_generators[1].calls == free_generators[1].calls == [([2, 3], 1), ([2, 3], 2), ([2, 3], 3), ([2], 4)]
    # Same trajectories as the unsynchronised loop, and the uneven turn counts are real.
    assert locked == free
    assert [out["calibadv_turns"] for out in locked] == [[1, 2], [4, 3]]
    assert all(not any(out["calibadv_invalid_action"]) for out in locked)


def test_non_collective_generator_makes_no_cross_process_call(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    outputs, generators, any_or = _two_process_rollout(tokenizer, collective=False, lockstep=True)
    assert any_or.calls == [0, 0]
    assert [len(g.calls) for g in generators] == [2, 4]
    assert [out["calibadv_turns"] for out in outputs] == [[1, 2], [4, 3]]


def test_generator_returning_turns_for_no_contexts_is_an_error(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer

    def bad(contexts, max_new_tokens, rows, turn):
        return [([1], [0.0])]

    bad.collective = True
    rollout = SearchAgentRollout(FakeRetriever(), max_turns=2, top_k=1)
    with pytest.raises(RuntimeError, match="no contexts"):
        rollout.run([], tokenizer, bad, max_completion_length=50, any_active=lambda active: True)


def test_transformers_generator_is_collective_only_when_generate_is_synchronised(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    generator = TransformersBackend(model, tokenizer, stop_strings=STOP_STRINGS)
    assert generator.collective is False  # one process, no sharding: no extra collective
    assert generator([], 8) == []
    # The empty call of a collective generator runs a one-token dummy generate (here on one process) and returns [].
    generator.collective = True
    calls = []
    original = model.generate

    def counting_generate(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    model.generate = counting_generate
    try:
        state = torch.get_rng_state()
        assert generator([], 8) == []
        assert torch.equal(state, torch.get_rng_state())  # greedy: this process's sampling stream is untouched
    finally:
        del model.generate
    assert len(calls) == 1 and calls[0]["input_ids"].shape == (1, 1)
    assert calls[0]["generation_config"].max_new_tokens == 1 and calls[0]["generation_config"].do_sample is False
