"""Shared helpers of the CalibAdv tests: a scripted policy on a real tiny model, a fake retriever, scripts for the
built-in ``deepsearch`` questions, and a fixed-table rollout for the multi-process test.

``ScriptedTurns`` is a transformers ``LogitsProcessor`` that makes a real (random) model write a script: for each
prompt, a list of turns, each a list of alternative texts. At every step it finds the row's prompt in the decoded
context, splits what follows it at the observation ends (``</information>\\n\\n`` [+ ``<think>``]) to get the turn
number and the text of the current turn so far, and allows only the next characters of the alternatives that extend
that text (equal logits: sampling picks uniformly where alternatives diverge); past the end of every alternative, or
past the last turn, only EOS. Everything else — ``generate``, stop strings, EOS handling, log-probs, masks — is the
production path. With a character tokenizer one character is one token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from transformers import LogitsProcessor

from trl_ext import CalibAdvConfig, CalibAdvTrainer, HAPOConfig
from trl_ext.data.deepsearch import DEEPSEARCH_ALPHABET, build_deepsearch_world
from trl_ext.retrieval import Document
from trl_ext.rollout.search_agent import SearchAgentRollout

OBSERVATION_END = "</information>\n\n"


# CalibAdv with HAPO's adaptive rollout temperature, composed exactly as docs/extending.md shows: the HAPO fields come
# from HAPOConfig (CalibAdv's advantage and objective defaults win, being first), the temperature from the mixin.
@dataclass
class CalibAdvHAPOConfig(CalibAdvConfig, HAPOConfig):
    pass


def calibadv_hapo_trainer_class() -> type:
    """``class CalibAdvHAPOTrainer(HAPOTemperatureMixin, CalibAdvTrainer)`` (imported lazily: it imports TRL)."""
    from trl_ext.trainers.hapo import HAPOTemperatureMixin

    class CalibAdvHAPOTrainer(HAPOTemperatureMixin, CalibAdvTrainer):
        pass

    return CalibAdvHAPOTrainer


class ScriptedTurns(LogitsProcessor):
    """Force a real model to write scripted turns (see the module docstring).

    Args:
        tokenizer: a character tokenizer (every character of the scripts is one token).
        scripts: prompt text (exactly as the rollout's prompt, before ``<think>``) -> turns -> alternatives.
        prepend_think_token: the rollout's setting (the prompt and observations then end with ``<think>``).
    """

    def __init__(self, tokenizer: Any, scripts: dict[str, Sequence[Sequence[str] | str]], prepend_think_token=False):
        self.tokenizer = tokenizer
        self.scripts = {
            prompt: [[turn] if isinstance(turn, str) else list(turn) for turn in turns]
            for prompt, turns in scripts.items()
        }
        self.think = "<think>" if prepend_think_token else ""
        self.eos = tokenizer.eos_token_id
        self._ids: dict[str, int] = {}

    def token(self, char: str) -> int:
        if char not in self._ids:
            ids = self.tokenizer.encode(char, add_special_tokens=False)
            assert len(ids) == 1, f"{char!r} is not one token"
            self._ids[char] = ids[0]
        return self._ids[char]

    def allowed(self, text: str) -> list[int]:
        for prompt, turns in self.scripts.items():
            start = text.find(prompt + self.think)
            if start < 0:
                continue
            completion = text[start + len(prompt) + len(self.think) :]
            parts = completion.split(OBSERVATION_END + self.think)
            turn, so_far = len(parts) - 1, parts[-1]
            if turn >= len(turns):
                return [self.eos]
            nexts = sorted(
                {alt[len(so_far)] for alt in turns[turn] if alt.startswith(so_far) and len(alt) > len(so_far)}
            )
            return [self.token(c) for c in nexts] or [self.eos]
        raise AssertionError(f"no script for the context {text[-200:]!r}")

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        forced = torch.full_like(scores, float("-inf"))
        texts = self.tokenizer.batch_decode(input_ids.tolist(), skip_special_tokens=True)
        for row, text in enumerate(texts):
            forced[row, self.allowed(text)] = 0.0
        return forced


class FakeRetriever:
    """Deterministic retriever recording every call: the query ``"q"`` gets documents ``q-0 .. q-(k-1)`` (title ``q``,
    text ``"text of q number i"``); a query in ``empty`` gets none."""

    def __init__(self, empty: Sequence[str] = ()) -> None:
        self.calls: list[tuple[list[str], int]] = []
        self.empty = set(empty)

    def search(self, queries: list[str], top_k: int) -> list[list[Document]]:
        self.calls.append((list(queries), top_k))
        return [
            [] if q in self.empty else [Document(f"{q}-{i}", q, f"text of {q} number {i}") for i in range(top_k)]
            for q in queries
        ]


# ---------------------------------------------------------------------------------------------------------------------
# deepsearch scripts
# ---------------------------------------------------------------------------------------------------------------------


def _titles(world_seed: int = 0) -> dict[str, str]:
    return {doc.id: doc.title for doc in build_deepsearch_world(world_seed).documents}


def deepsearch_script(row: dict[str, Any], world_seed: int = 0, answer_early: bool = True) -> list[list[str]]:
    """Three turns for a ``deepsearch`` row: search the named entity or a bad query; search the second document of
    the chain (or, with ``answer_early``, answer wrongly instead); answer right or wrong. Yields right, wrong and
    unanswered-early trajectories whose searches hit or miss the supporting documents."""
    titles = _titles(world_seed)
    first, second = (titles[d] for d in row["supporting_doc_ids"][:2])
    gold = row["golden_answers"][0]
    second_turn = [f"<think>then {second}</think>\n<search> {second} </search> extra"]
    if answer_early:
        second_turn.append("<think>no</think>\n<answer> nope </answer>")
    return [
        [f"<think>find {first}</think>\n<search> {first} </search>", "<think>hm</think>\n<search> zzz qqq </search>"],
        second_turn,
        [f"<think>ok</think>\n<answer> {gold} </answer>", "<think>ok</think>\n<answer> wrong guess </answer>"],
    ]


def deepsearch_scripts(dataset, world_seed: int = 0, answer_early: bool = False) -> dict[str, list[list[str]]]:
    """Prompt -> :func:`deepsearch_script` for every row of a ``deepsearch`` dataset (by default every trajectory makes
    the second search, so most groups mix right and wrong answers after useful searches)."""
    return {row["prompt"]: deepsearch_script(row, world_seed, answer_early) for row in dataset}


def build_deepsearch_checkpoint(directory: str) -> str:
    """Tiny Qwen2 over the deepsearch alphabet with room for long multi-turn contexts."""
    from trl_ext.tiny_models import build_tiny_checkpoint

    return build_tiny_checkpoint(directory, alphabet=DEEPSEARCH_ALPHABET, max_position_embeddings=4096)


@pytest.fixture(scope="session", name="deepsearch_checkpoint")
def deepsearch_checkpoint_fixture(tmp_path_factory) -> str:
    """Fixture ``deepsearch_checkpoint`` (import this function into a test module): :func:`build_deepsearch_checkpoint`
    in a temporary directory."""
    return build_deepsearch_checkpoint(str(tmp_path_factory.mktemp("calibadv-tiny")))


# ---------------------------------------------------------------------------------------------------------------------
# Fixed-table rollout (identical completions whatever the number of processes)
# ---------------------------------------------------------------------------------------------------------------------


class TableGenerator:
    """:class:`~trl_ext.rollout.search_agent.TurnGenerator` writing ``table[prompt][row % G][turn - 1]`` (nothing
    sampled; log-probs 0). Finds the row's prompt in its decoded context."""

    def __init__(self, tokenizer: Any, table: dict[str, list[list[str]]], num_generations: int) -> None:
        self.tokenizer = tokenizer
        self.table = table
        self.num_generations = num_generations

    def __call__(self, contexts, max_new_tokens, rows, turn):
        out = []
        for context, row in zip(contexts, rows, strict=True):
            text = self.tokenizer.decode(context, skip_special_tokens=True)
            prompt = next(p for p in self.table if p in text)
            turns = self.table[prompt][row % self.num_generations]
            turn_text = turns[turn - 1] if turn - 1 < len(turns) else ""
            ids = self.tokenizer.encode(turn_text, add_special_tokens=False)[:max_new_tokens]
            out.append((ids, [0.0] * len(ids)))
        return out


class TableRollout(SearchAgentRollout):
    """A :class:`SearchAgentRollout` whose turns come from a :class:`TableGenerator`."""

    def __init__(self, retriever, table, num_generations, **kwargs) -> None:
        super().__init__(retriever, **kwargs)
        self.table = table
        self.num_generations = num_generations

    def make_turn_generator(self, model, tokenizer, trainer=None):
        return TableGenerator(tokenizer, self.table, self.num_generations)


def deepsearch_table(dataset, num_generations: int, world_seed: int = 0) -> dict[str, list[list[str]]]:
    """prompt -> G fixed trajectories (lists of turn texts), combining the alternatives of :func:`deepsearch_script`
    differently for each generation index, so groups hold correct, wrong and unanswered trajectories."""
    choices = [
        (0, 0, 0),
        (1, 0, 1),
        (0, 1, 0),
        (0, 0, 1),
        (1, 1, 0),
        (1, 0, 0),
    ]  # (0, 0, 0) and (1, 0, 0) answer right
    table = {}
    for index, row in enumerate(dataset):
        script = deepsearch_script(row, world_seed)
        offset = 2 * index  # every window of four consecutive choices from an even offset holds a right answer
        table[row["prompt"]] = [
            [script[turn][choices[(offset + g) % len(choices)][turn]] for turn in range(3)]
            for g in range(num_generations)
        ]
    return table
