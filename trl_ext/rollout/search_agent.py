"""The multi-turn search-agent rollout of CalibAdv (Wu et al., arXiv 2604.18235).

One trajectory, run batched over the trajectories still active (Search-R1 protocol)::

    prompt [+ "<think>"]
    turn 1:  <think> ... </think> <search> query </search>          generated, env_mask = 1
             \\n\\n<information>Doc 1(Title: T) text ...</information>\\n\\n [<think>]     observation, env_mask = 0
    turn 2:  <think> ... </think> <search> query </search>          generated
             ...
    turn t:  <think> ... </think> <answer> short answer </answer>   generated; the trajectory is done

Turns t = 1 .. ``max_turns`` + 1. Each turn samples up to ``max_tokens_per_turn`` tokens with the trainer's sampling
settings and stops right after the first ``</search>`` or ``</answer>``; the sampled tokens are kept up to and
including the token that completes the stop string (never re-tokenised), an EOS is dropped. The turn text's first
``<(search|answer)>(.*?)</\\1>`` decides what happens next:

* ``answer``: done.
* ``search`` in turns 1 .. ``max_turns``: the stripped queries of all trajectories of the turn go to the retriever in
  one batch (``retriever.search(queries, top_k)``); the observation ``"\\n\\n<information>" + strip(format_documents(
  docs)) + "</information>\\n\\n"`` (+ ``"<think>"`` when prepending) is appended with env_mask 0 and log-prob 0, its
  document body shortened so that the observation fits ``max_obs_tokens`` tokens with its tags intact. The step
  ``{"think": <think text of the turn>, "docs": [doc keys]}`` is recorded.
* ``search`` in the final turn (t = ``max_turns`` + 1): not executed; done without an answer.
* no valid action: :data:`INVALID_ACTION_OBSERVATION` is appended (env_mask 0), the trajectory is marked invalid and
  is done.

The whole completion never exceeds ``max_completion_length`` tokens: a turn or observation that would cross it is cut
there and the trajectory is done (``calibadv_truncated``).

**Plugging into TRL.** A :class:`SearchAgentRollout` is a ``rollout_func(prompts, trainer) -> dict`` for
``trl.GRPOTrainer`` (the CalibAdv trainer installs one). TRL passes this process's prompts, one per completion (each
prompt already repeated ``num_generations`` times), as strings or as chat messages; the rollout applies the chat
template itself. It returns, per completion: ``prompt_ids``, ``completion_ids``, ``logprobs`` (the sampling
log-probs of the generated tokens after temperature / top-k / top-p / min-p; 0 on observations), ``env_mask`` (TRL's
``tool_mask``: 1 on generated tokens, 0 on observations; the loss mask is ``completion_mask * tool_mask``) and the
extra fields ``calibadv_transcript`` (``"<think>"`` if prepending + all turn texts and observations),
``calibadv_steps``, ``calibadv_invalid_action``, ``calibadv_turns`` and ``calibadv_truncated``. TRL merges the extra
fields into each input row, so reward functions receive them as keyword lists and the advantage seam can gather them.

**Backends.** Each turn is one call of the trainer's generation backend (:mod:`trl_ext.generation`): transformers
``generate`` (batched over the active trajectories, with a stopping criterion on the decoded text of the new tokens),
or the trainer's vLLM engine, colocated or server (one request per active trajectory and turn, vLLM's stop strings
with the stop string kept, the sampled tokens' processed log-probs). The rollout never asks which: the sampled token
ids are used as returned and the rollout cuts them after the stop string or EOS, so every backend builds the same
structure (env_mask, observations, log-probs 0 on observations). A trainer's sampling change (HAPO's adaptive
temperature) applies to every turn on every backend.

**Lockstep turns.** Each process runs the turn loop over its own trajectories, so processes may need different numbers
of turns. That is fine when a process's ``generate`` talks to no other process (one process, DDP, DeepSpeed ZeRO-1/2),
but transformers synchronises ``generate`` across ranks at every decoding step when the parameters are sharded
(``synced_gpus``: DeepSpeed ZeRO-3 or an FSDP-managed model, world size > 1); a process that left the loop early
would leave the others waiting in that collective forever (ZeRO-3) or mismatch their messages (FSDP2). A turn
generator whose ``collective`` attribute is True (the transformers backend sets it exactly under transformers'
``synced_gpus`` condition) is therefore called the same number of times on every process: before each
turn one cross-process OR (``any_active``, an all-reduce built from the trainer's accelerator) says whether any process
still has an active trajectory; while one has, every process calls the generator, with empty ``contexts`` and ``rows``
where none is active left (the generator takes part in its collective and returns ``[]``). The trajectories are those
of the unsynchronised loop; the cost is one small all-reduce per turn, and only for collective generators.

Decisions the paper leaves open:

* A completion never ends with EOS (the rollout drops it), so TRL's ``completions/clipped_ratio`` reads 1 and
  ``mask_truncated_completions=True`` would mask every completion (the trainer rejects it).
* A turn that reaches ``max_tokens_per_turn`` without a stop string or EOS has no valid action (invalid-action
  observation); a turn cut by the total budget is a truncation, not an invalid action.
* The invalid-action observation does not end with ``<think>`` even when prepending: the trajectory ends there.
* A step whose observation is cut by the total budget is still recorded (its search was executed); the trainer's
  segment check then counts the trajectory in ``calibadv/segment_mismatch``.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from trl_ext.advantages.calibadv_math import step_think_text
from trl_ext.generation import open_backend
from trl_ext.generation.transformers_generate import TransformersBackend
from trl_ext.retrieval.base import Document, Retriever, check_top_k, format_documents

__all__ = [
    "INVALID_ACTION_OBSERVATION",
    "STOP_STRINGS",
    "SearchAgentRollout",
    "TurnGenerator",
    "parse_action",
]

#: A turn ends right after the first of these strings.
STOP_STRINGS: tuple[str, ...] = ("</search>", "</answer>")

#: Appended (env_mask 0) after a turn with no valid action; the trajectory then ends and is format-invalid.
INVALID_ACTION_OBSERVATION: str = (
    "\nMy previous action is invalid. If I want to search, I should put the query between <search> and </search>. "
    "If I want to give the final answer, I should put the answer between <answer> and </answer>.\n"
)

_ACTION = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL)
_INFORMATION_OPEN = "\n\n<information>"
_INFORMATION_CLOSE = "</information>\n\n"
_THINK_OPEN = "<think>"


def parse_action(turn_text: str) -> tuple[str | None, str]:
    """``(action, content)`` of a turn: the first ``<(search|answer)>(.*?)</\\1>`` match, or ``(None, "")``."""
    match = _ACTION.search(turn_text)
    return (match.group(1), match.group(2)) if match else (None, "")


class TurnGenerator(Protocol):
    """Samples one turn for a batch of contexts.

    ``generator(contexts, max_new_tokens, rows, turn)`` gets the token ids of every active trajectory (prompt +
    completion so far), the token budget of the turn, the trajectories' global row indices (process index x local
    batch + local index; a scripted generator may key on them) and the turn number (1-based). It returns, per context,
    the sampled token ids and their sampling log-probs (same length). It may return tokens past a stop string or an
    EOS: the rollout cuts them.

    A generator may set ``collective = True`` (absent means False) when each call takes part in a collective with the
    other processes (see "Lockstep turns" in the module docstring): :meth:`SearchAgentRollout.run` then calls it the
    same number of times on every process, with empty ``contexts`` and ``rows`` where this process has no active
    trajectory left; it must still join its collective and return ``[]``.
    """

    def __call__(
        self, contexts: list[list[int]], max_new_tokens: int, rows: list[int], turn: int
    ) -> list[tuple[list[int], list[float]]]: ...


# ---------------------------------------------------------------------------------------------------------------------
# The rollout
# ---------------------------------------------------------------------------------------------------------------------


def any_active_across(accelerator: Any) -> Callable[[bool], bool]:
    """``any_active(flag)``: True when ``flag`` is True on at least one process of ``accelerator``.

    One all-reduce (sum) of a one-element float tensor on the accelerator's device, through accelerate's ``reduce``,
    so it works over gloo (CPU) as over NCCL. Every process must call it the same number of times.
    """

    def any_active(active: bool) -> bool:
        flag = torch.tensor([1.0 if active else 0.0], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)

    return any_active


@dataclass
class _Trajectory:
    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    invalid_action: bool = False
    truncated: bool = False
    turns: int = 0
    done: bool = False

    def append(self, ids: Sequence[int], text: str, generated: bool, logprobs: Sequence[float] | None = None) -> None:
        self.completion_ids.extend(ids)
        self.env_mask.extend([1 if generated else 0] * len(ids))
        self.logprobs.extend(list(logprobs) if logprobs is not None else [0.0] * len(ids))
        self.pieces.append(text)


def _tokenizer_of(processing_class: Any) -> Any:
    return getattr(processing_class, "tokenizer", processing_class)


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class SearchAgentRollout:
    """Multi-turn search-agent rollout, usable as TRL's ``rollout_func`` (see the module docstring).

    Args:
        retriever: an object with ``search(queries: list[str], top_k: int) -> list[list[Document]]``
            (:mod:`trl_ext.retrieval`).
        max_turns: ``calibadv_max_turns``: turns that may search; one final turn without search follows. Default 4.
        max_tokens_per_turn: ``calibadv_max_tokens_per_turn``: tokens sampled per turn at most. Default 1024.
        max_obs_tokens: ``calibadv_max_obs_tokens``: tokens of one observation at most. Default 2048.
        top_k: ``calibadv_topk``: documents per search. Default 3.
        prepend_think_token: ``calibadv_prepend_think_token``: end the prompt and every observation with ``<think>``.
        logits_processors: extra transformers ``LogitsProcessor`` objects for every turn (e.g. constrained decoding).

    Call it as ``rollout(prompts, trainer)`` (TRL), or without a trainer as ``rollout.generate(prompts, model,
    tokenizer, max_completion_length=...)``, or on token ids with any :class:`TurnGenerator` via :meth:`run`.
    """

    def __init__(
        self,
        retriever: Retriever,
        *,
        max_turns: int = 4,
        max_tokens_per_turn: int = 1024,
        max_obs_tokens: int = 2048,
        top_k: int = 3,
        prepend_think_token: bool = False,
        logits_processors: Sequence[Any] = (),
    ) -> None:
        if not callable(getattr(retriever, "search", None)):
            raise ValueError(f"retriever must have a search(queries, top_k) method, got {retriever!r}")
        self.retriever = retriever
        self.max_turns = _check_positive_int(max_turns, "calibadv_max_turns")
        self.max_tokens_per_turn = _check_positive_int(max_tokens_per_turn, "calibadv_max_tokens_per_turn")
        self.max_obs_tokens = _check_positive_int(max_obs_tokens, "calibadv_max_obs_tokens")
        self.top_k = check_top_k(top_k)
        self.prepend_think_token = bool(prepend_think_token)
        self.logits_processors = list(logits_processors)

    @classmethod
    def from_config(cls, args: Any, retriever: Retriever, **kwargs: Any) -> SearchAgentRollout:
        """Build from a config with the ``calibadv_*`` rollout fields (``CalibAdvConfig``)."""
        return cls(
            retriever,
            max_turns=args.calibadv_max_turns,
            max_tokens_per_turn=args.calibadv_max_tokens_per_turn,
            max_obs_tokens=args.calibadv_max_obs_tokens,
            top_k=args.calibadv_topk,
            prepend_think_token=args.calibadv_prepend_think_token,
            **kwargs,
        )

    # ------------------------------------------------------------------------------------------------------------
    # Entry points
    # ------------------------------------------------------------------------------------------------------------
    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, list[Any]]:
        """TRL's ``rollout_func``: one completion per prompt with the trainer's generation backend and settings.

        The backend is the trainer's (:func:`trl_ext.generation.open_backend`: transformers ``generate`` on the
        unwrapped model, or its vLLM engine); a trainer that changes how tokens are sampled (HAPO's adaptive
        temperature, :class:`~trl_ext.trainers.hapo.HAPOTemperatureMixin`) hands its change over through
        ``trainer.rollout_sampling_change()`` and every turn samples with it.
        """
        tokenizer = _tokenizer_of(trainer.processing_class)
        prompt_ids = self.encode_prompts(
            prompts,
            tokenizer,
            chat_template=getattr(trainer, "chat_template", None),
            chat_template_kwargs=getattr(trainer, "chat_template_kwargs", None),
        )
        accelerator = trainer.accelerator
        sampling_change = getattr(trainer, "rollout_sampling_change", None)
        sampling = sampling_change() if callable(sampling_change) else None
        with open_backend(
            trainer, stop_strings=STOP_STRINGS, sampling=sampling, logits_processors=self.logits_processors
        ) as backend:
            generator = self.make_turn_generator(backend, tokenizer, trainer)
            output = self.run(
                prompt_ids,
                tokenizer,
                generator,
                max_completion_length=trainer.max_completion_length,
                eos_token_ids=getattr(trainer, "eos_token_ids", None),
                row_offset=accelerator.process_index * len(prompts),
                any_active=any_active_across(accelerator) if accelerator.num_processes > 1 else None,
            )
        log_extra = getattr(trainer, "_log_completion_extra", None)
        if callable(log_extra):  # one column in the completions table
            log_extra("calibadv_turns", list(output["calibadv_turns"]))
        return output

    def make_turn_generator(self, backend: Any, tokenizer: Any, trainer: Any | None = None) -> TurnGenerator:
        """The :class:`TurnGenerator` of a rollout: the trainer's generation backend itself (a backend samples one
        turn per call). Override for scripted generation."""
        return backend

    def generate(
        self,
        prompts: list[Any],
        model: Any,
        tokenizer: Any,
        *,
        max_completion_length: int,
        generation_config: Any | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, list[Any]]:
        """The rollout outside a trainer: ``model.generate`` with ``generation_config`` (default: sampling at T=1)."""
        tokenizer = _tokenizer_of(tokenizer)
        prompt_ids = self.encode_prompts(prompts, tokenizer, chat_template_kwargs=chat_template_kwargs)
        generator = TransformersBackend(
            model, tokenizer, generation_config, self.logits_processors, stop_strings=STOP_STRINGS
        )
        return self.run(prompt_ids, tokenizer, generator, max_completion_length=max_completion_length)

    def encode_prompts(
        self,
        prompts: list[Any],
        tokenizer: Any,
        *,
        chat_template: str | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> list[list[int]]:
        """Token ids of each prompt: chat messages get the chat template with the generation prompt; plain strings
        are tokenised as TRL does; ``<think>`` is appended when prepending."""
        suffix = _THINK_OPEN if self.prepend_think_token else ""
        encoded = []
        for prompt in prompts:
            if isinstance(prompt, str):
                encoded.append(list(tokenizer(prompt + suffix)["input_ids"]))
                continue
            if not isinstance(prompt, list) or not all(isinstance(m, dict) for m in prompt):
                raise ValueError(f"a prompt must be a string or a list of chat messages, got {prompt!r:.200}")
            text = tokenizer.apply_chat_template(
                prompt,
                chat_template=chat_template,
                add_generation_prompt=True,
                tokenize=False,
                **(chat_template_kwargs or {}),
            )
            encoded.append(list(tokenizer(text + suffix, add_special_tokens=False)["input_ids"]))
        return encoded

    # ------------------------------------------------------------------------------------------------------------
    # The loop
    # ------------------------------------------------------------------------------------------------------------
    def run(
        self,
        prompt_ids: list[list[int]],
        tokenizer: Any,
        generator: TurnGenerator | Callable[..., Any],
        *,
        max_completion_length: int,
        eos_token_ids: Sequence[int] | None = None,
        row_offset: int = 0,
        any_active: Callable[[bool], bool] | None = None,
    ) -> dict[str, list[Any]]:
        """Roll out every prompt once (see the module docstring) and return TRL's ``rollout_func`` dict.

        Args:
            prompt_ids: token ids of each prompt (already templated).
            tokenizer: for decoding turns and encoding observations.
            generator: samples one turn for a batch of contexts (:class:`TurnGenerator`).
            max_completion_length: total token budget of a completion (turns and observations).
            eos_token_ids: ids that end a turn and are dropped (default: the tokenizer's eos).
            row_offset: global index of the first prompt (passed on to ``generator`` as ``rows``).
            any_active: cross-process OR of "this process still has an active trajectory" (:func:`any_active_across`).
                Used only when ``generator.collective`` is True: the loop then runs while any process has an active
                trajectory, calling ``generator`` with empty contexts where this one has none ("Lockstep turns" in
                the module docstring). ``None``: every process stops at its own last turn.
        """
        budget = _check_positive_int(max_completion_length, "max_completion_length")
        if eos_token_ids is None:
            eos_token_ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
        eos = frozenset(int(t) for t in eos_token_ids)
        trajectories = [_Trajectory(list(ids)) for ids in prompt_ids]
        lockstep = any_active is not None and bool(getattr(generator, "collective", False))

        for turn in range(1, self.max_turns + 2):
            active = [i for i, traj in enumerate(trajectories) if not traj.done]
            # Every process evaluates the same sequence of any_active calls, so all leave the loop at the same turn.
            if not (any_active(bool(active)) if lockstep else active):
                break
            if not active:  # lockstep: another process still generates; join the generator's collective
                sampled = generator([], self.max_tokens_per_turn, [], turn)
                if len(sampled) != 0:
                    raise RuntimeError(f"the turn generator returned {len(sampled)} turns for no contexts")
                continue
            limits = {i: min(self.max_tokens_per_turn, budget - len(trajectories[i].completion_ids)) for i in active}
            contexts = [trajectories[i].prompt_ids + trajectories[i].completion_ids for i in active]
            sampled = generator(contexts, max(limits.values()), [row_offset + i for i in active], turn)
            if len(sampled) != len(active):
                raise RuntimeError(f"the turn generator returned {len(sampled)} turns for {len(active)} contexts")

            searches: list[tuple[int, str, str]] = []  # (trajectory, query, think text)
            for i, (ids, logprobs) in zip(active, sampled, strict=True):
                traj = trajectories[i]
                ids, logprobs, _ = self._cut_turn(list(ids), list(logprobs), tokenizer, eos, limits[i])
                text = tokenizer.decode(ids, skip_special_tokens=True)
                traj.append(ids, text, generated=True, logprobs=logprobs)
                traj.turns += 1
                action, content = parse_action(text)
                if action == "answer":
                    traj.done = True
                elif len(traj.completion_ids) >= budget:  # no room left for an observation or another turn
                    traj.done = traj.truncated = True
                elif action == "search" and turn <= self.max_turns:
                    searches.append((i, content.strip(), step_think_text(text, self.prepend_think_token)))
                elif action == "search":  # a search in the final turn is not executed
                    traj.done = True
                else:  # no valid action: EOS or the per-turn limit before a stop string
                    self._append_observation(traj, INVALID_ACTION_OBSERVATION, tokenizer, budget)
                    traj.invalid_action = traj.done = True

            if searches:
                results = self.retriever.search([query for _, query, _ in searches], self.top_k)
                if len(results) != len(searches):
                    raise RuntimeError(
                        f"retriever {self.retriever!r} returned {len(results)} result lists for {len(searches)} queries"
                    )
                for (i, _, think), documents in zip(searches, results, strict=True):
                    docs = [Document.coerce(doc) for doc in documents][: self.top_k]
                    traj = trajectories[i]
                    traj.steps.append({"think": think, "docs": [doc.key for doc in docs]})
                    self._append_observation(traj, self._information(docs, tokenizer), tokenizer, budget)
                    if len(traj.completion_ids) >= budget:
                        traj.done = traj.truncated = True

        for traj in trajectories:
            if not traj.completion_ids:
                # Nothing sampled (an EOS first) and an observation that encoded to no token (a tokenizer without
                # the observation's characters): TRL needs at least one completion token, so the trajectory ends with
                # one EOS, masked from the loss like an observation (env_mask 0).
                end = min(eos) if eos else tokenizer.pad_token_id
                if end is None:
                    raise RuntimeError(
                        "an empty trajectory needs an EOS or pad token id to end it; the tokenizer has none"
                    )
                traj.append([end], "", generated=False)
        prefix = _THINK_OPEN if self.prepend_think_token else ""
        return {
            "prompt_ids": [traj.prompt_ids for traj in trajectories],
            "completion_ids": [traj.completion_ids for traj in trajectories],
            "logprobs": [traj.logprobs for traj in trajectories],
            "env_mask": [traj.env_mask for traj in trajectories],
            "calibadv_transcript": [prefix + "".join(traj.pieces) for traj in trajectories],
            "calibadv_steps": [traj.steps for traj in trajectories],
            "calibadv_invalid_action": [traj.invalid_action for traj in trajectories],
            "calibadv_turns": [traj.turns for traj in trajectories],
            "calibadv_truncated": [traj.truncated for traj in trajectories],
        }

    # ------------------------------------------------------------------------------------------------------------
    # Pieces
    # ------------------------------------------------------------------------------------------------------------
    @staticmethod
    def _cut_turn(
        ids: list[int], logprobs: list[float], tokenizer: Any, eos: frozenset[int], limit: int
    ) -> tuple[list[int], list[float], str]:
        """Keep the sampled tokens up to the first EOS (dropped), at most ``limit`` of them, and up to and including
        the token that completes the first stop string. Returns ``(ids, logprobs, reason)`` with reason ``"stop"``,
        ``"eos"`` (EOS, or the generator ended), or ``"limit"``."""
        if len(logprobs) != len(ids):
            raise RuntimeError(f"the turn generator returned {len(ids)} tokens but {len(logprobs)} log-probs")
        reason = "eos"
        for position, token in enumerate(ids):
            if token in eos:
                ids = ids[:position]
                break
        if len(ids) >= limit:
            ids, reason = ids[:limit], "limit"
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if any(stop in text for stop in STOP_STRINGS):

            def completes(n: int) -> bool:
                prefix = tokenizer.decode(ids[:n], skip_special_tokens=True)
                return any(stop in prefix for stop in STOP_STRINGS)

            # the shortest prefix containing a stop string (prefix decodes grow monotonically)
            end = bisect.bisect_left(range(len(ids) + 1), True, key=completes)
            ids, reason = ids[:end], "stop"
        return ids, logprobs[: len(ids)], reason

    def _encode(self, tokenizer: Any, text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def _information(self, docs: list[Document], tokenizer: Any) -> str:
        """The observation text for a search, its document body shortened to fit ``max_obs_tokens`` tokens."""
        suffix = _INFORMATION_CLOSE + (_THINK_OPEN if self.prepend_think_token else "")
        body = format_documents(docs).strip()
        text = _INFORMATION_OPEN + body + suffix
        excess = len(self._encode(tokenizer, text)) - self.max_obs_tokens
        if excess <= 0:
            return text
        body_ids = self._encode(tokenizer, body)
        keep = len(body_ids) - excess
        while keep > 0:
            text = _INFORMATION_OPEN + tokenizer.decode(body_ids[:keep], skip_special_tokens=True) + suffix
            excess = len(self._encode(tokenizer, text)) - self.max_obs_tokens
            if excess <= 0:
                return text
            keep -= excess
        return _INFORMATION_OPEN + suffix  # the tags alone; _append_observation cuts further if they do not fit

    def _append_observation(self, traj: _Trajectory, text: str, tokenizer: Any, budget: int) -> None:
        ids = self._encode(tokenizer, text)
        limit = min(self.max_obs_tokens, budget - len(traj.completion_ids))
        if len(ids) > limit:
            ids = ids[: max(limit, 0)]
            text = tokenizer.decode(ids, skip_special_tokens=True)
        traj.append(ids, text, generated=False)
