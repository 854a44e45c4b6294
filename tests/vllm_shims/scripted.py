"""Test-only vLLM logits processor: makes a real (random) model write scripted search-agent turns under vLLM.

The vLLM counterpart of ``tests/calibadv_helpers.ScriptedTurns`` in *bias* form, so that greedy decoding is
deterministic and the log-probs stay finite and informative: at every step the tokens that extend the request's script
get the row's maximum logit + a bonus (equal among themselves, so the lowest id wins a tie, as ``torch.argmax`` does
on both backends); the other logits are left alone. :class:`ScriptedBiasTurns` is the transformers twin with the same
rule. A request opts in with ``extra_args={"scripted_turns": json.dumps({prompt: turns})}`` and may set
``"scripted_bonus"`` (default :data:`BONUS`; sampling at T = 1 needs a large one, e.g. 16, to follow the script).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (calibadv_helpers)

from calibadv_helpers import ScriptedTurns  # noqa: E402

BONUS = 4.0
EXTRA_ARG = "scripted_turns"
BONUS_ARG = "scripted_bonus"


def bias_row(scores: torch.Tensor, allowed: list[int], bonus: float = BONUS) -> None:
    """Raise the ``allowed`` entries of one row of logits to the row's maximum + ``bonus`` (in place)."""
    top = scores.max()
    scores[allowed] = top + bonus


class ScriptedBiasTurns(ScriptedTurns):
    """transformers processor: the bias rule of this module on top of ``ScriptedTurns.allowed``."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        texts = self.tokenizer.batch_decode(input_ids.tolist(), skip_special_tokens=True)
        for row, text in enumerate(texts):
            bias_row(scores[row], self.allowed(text))
        return scores


def _vllm_processor_class() -> type:
    from transformers import AutoTokenizer
    from vllm.v1.sample.logits_processor import LogitsProcessor
    from vllm.v1.sample.logits_processor.builtin import process_dict_updates

    class ScriptedVLLMTurns(LogitsProcessor):
        def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
            self.tokenizer = AutoTokenizer.from_pretrained(vllm_config.model_config.tokenizer)
            self.requests: dict[int, tuple[ScriptedTurns, float, list[int], list[int]]] = {}

        def is_argmax_invariant(self) -> bool:
            return False

        def update_state(self, batch_update: Any) -> None:
            def new_state(params: Any, prompt: list[int] | None, output: list[int]) -> Any:
                extra = params.extra_args or {}
                if EXTRA_ARG not in extra:
                    return None
                script = ScriptedTurns(self.tokenizer, json.loads(extra[EXTRA_ARG]))
                return script, float(extra.get(BONUS_ARG, BONUS)), list(prompt or []), output

            process_dict_updates(self.requests, batch_update, new_state)

        def apply(self, logits: torch.Tensor) -> torch.Tensor:
            for index, (script, bonus, prompt, output) in self.requests.items():
                if index < logits.shape[0]:
                    text = self.tokenizer.decode(prompt + list(output), skip_special_tokens=True)
                    bias_row(logits[index], script.allowed(text), bonus)
            return logits

    return ScriptedVLLMTurns


def __getattr__(name: str) -> Any:
    # vLLM loads the processor by name ("vllm_shims.scripted:ScriptedVLLMTurns"); building the class lazily keeps
    # this module importable without vLLM.
    if name == "ScriptedVLLMTurns":
        cls = _vllm_processor_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
