"""Question-answering rewards for search agents: answer F1 times format validity (CalibAdv, arXiv 2604.18235).

For a transcript y (the assistant side of a search-agent trajectory: turns and observations in order) and gold
aliases g_1..g_m:

    R(y) = max_j F1(norm(answer(y)), norm(g_j)) * 1[format_valid(y)]                         (in [0, 1])

* ``answer(y)`` is the text of the **last** ``<answer>...</answer>`` of y; without one, F1 = 0.
* ``norm`` is the SQuAD normalisation: lowercase, drop ASCII punctuation, drop the articles a/an/the, collapse
  whitespace.
* F1 is the SQuAD token F1 over the multiset of normalised words: P = |overlap| / |pred|, R = |overlap| / |gold|,
  F1 = 2PR / (P + R), and 0 when there is no overlap.
* ``format_valid`` is the tag state machine below (see :func:`is_valid_format`).

Everything here is plain Python (``re``, ``string``, ``collections``): the CalibAdv trainer calls the same functions
on gathered transcripts to decide silver-set eligibility, independently of the configured reward functions.

Decisions the paper leaves open (tested in tests/test_calibadv_math.py):

* An answer or gold alias that normalises to no words scores F1 = 0 (SQuAD gives 1 when *both* are empty; an empty
  gold alias is bad data, not a match).
* Whitespace after ``</answer>`` is allowed ("nothing after ``</answer>``" is read as nothing but whitespace: decoded
  completions often end with a newline).
* "Special tokens" removed before the format check are chat-template markers of the form ``<|...|>`` (Qwen, Llama 3)
  and ``<s>``/``</s>``; TRL already decodes completions with ``skip_special_tokens=True``, so this only matters for
  transcripts built by hand.
* Text that is not one of the four tags (e.g. ``<b>``) is ordinary text: allowed inside a tag's content, invalid
  outside tags.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from trl_ext.rewards.text import completion_text

__all__ = [
    "FORMAT_TAGS",
    "answer_f1",
    "build_transcript",
    "extract_answer",
    "is_valid_format",
    "make_qa_f1_format_reward",
    "normalize_answer",
    "qa_f1_format_reward",
    "qa_f1_format_score",
    "strip_special_tokens",
    "token_f1",
]

#: The tags of the search-agent protocol, in the order they are introduced by the instruction.
FORMAT_TAGS: tuple[str, ...] = ("think", "search", "information", "answer")

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_TAG = re.compile(r"</?(?:think|search|information|answer)>")
_SPECIAL_TOKEN = re.compile(r"<\|[^<>|]*\|>|</?s>")

# Format state machine: (state, tag) -> next state. Any pair not listed is invalid.
_TRANSITIONS: dict[tuple[str, str], str] = {
    ("start", "<think>"): "in_think",
    ("in_think", "</think>"): "after_think",
    ("after_think", "<search>"): "in_search",
    ("in_search", "</search>"): "after_search",
    ("after_search", "<information>"): "in_information",
    ("in_information", "</information>"): "information",
    ("information", "<think>"): "in_think",
    ("after_think", "<answer>"): "in_answer",
    ("in_answer", "</answer>"): "end",
}
# States whose text (a tag's content) may be anything but one of the four tags.
_CONTENT_STATES = frozenset({"in_think", "in_search", "in_information", "in_answer"})


def normalize_answer(text: str) -> str:
    """SQuAD answer normalisation: lowercase, remove punctuation, remove the articles a/an/the, collapse whitespace.

    ``normalize_answer("The Beijing!") == "beijing"``.
    """
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def token_f1(prediction: str, ground_truths: str | Sequence[str]) -> float:
    """SQuAD token F1 of ``prediction`` against one gold string or the maximum over several aliases, in [0, 1].

    F1 = 2 P R / (P + R) with P = overlap / |pred words|, R = overlap / |gold words| after :func:`normalize_answer`;
    the overlap counts words as a multiset. 0 when there is no overlap or either side normalises to no words; 0 for
    an empty alias list.
    """
    golds = [ground_truths] if isinstance(ground_truths, str) else list(ground_truths)
    pred_tokens = normalize_answer(prediction).split()
    best = 0.0
    if not pred_tokens:
        return best
    for gold in golds:
        gold_tokens = normalize_answer(str(gold)).split()
        if not gold_tokens:
            continue
        overlap = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
        if overlap == 0:
            continue
        precision = overlap / len(pred_tokens)
        recall = overlap / len(gold_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def extract_answer(transcript: str) -> str | None:
    """The stripped text of the **last** ``<answer>...</answer>`` in ``transcript``, or None if there is none."""
    matches = _ANSWER.findall(transcript)
    return matches[-1].strip() if matches else None


def answer_f1(transcript: str, golden_answers: str | Sequence[str]) -> float:
    """F1 of the transcript's last answer against the gold aliases; 0 if it never answered."""
    answer = extract_answer(transcript)
    return 0.0 if answer is None else token_f1(answer, golden_answers)


def strip_special_tokens(text: str) -> str:
    """Remove chat-template special tokens (``<|...|>``, ``<s>``, ``</s>``) before the format check."""
    return _SPECIAL_TOKEN.sub("", text)


def build_transcript(completion: str, prepend_think_token: bool = False) -> str:
    """The assistant-side transcript of a completion: ``"<think>" + completion`` when the rollout placed
    ``<think>`` in the prompt (``calibadv_prepend_think_token``), else the completion itself.

    With prepending, every observation inside the completion already ends with ``<think>``; only the first one, which
    sits at the end of the prompt, is missing from the completion.
    """
    return "<think>" + completion if prepend_think_token else completion


def is_valid_format(transcript: str, *, invalid_action: bool = False) -> bool:
    """Format validity of a search-agent transcript.

    True iff all hold:

    1. ``invalid_action`` is False (the rollout never appended the invalid-action observation);
    2. after :func:`strip_special_tokens`, each of ``think``, ``search``, ``information``, ``answer`` opens as often as
       it closes;
    3. the tags follow ``start -<think>-> in_think -</think>-> after_think``, then either ``-<search>-> in_search
       -</search>-> after_search -<information>-> in_information -</information>-> information -<think>-> in_think``
       or ``-<answer>-> in_answer -</answer>-> end``; only whitespace outside tags; nothing but whitespace after
       ``</answer>``; the sequence ends in ``end``;
    4. there is at least one ``<search>``.

    The transcript must include the leading ``<think>`` when the rollout prepends it (see :func:`build_transcript`).
    """
    if invalid_action:
        return False
    text = strip_special_tokens(transcript)
    for tag in FORMAT_TAGS:
        if text.count(f"<{tag}>") != text.count(f"</{tag}>"):
            return False
    state, position, searched = "start", 0, False
    for match in _TAG.finditer(text):
        if state not in _CONTENT_STATES and text[position : match.start()].strip():
            return False
        state = _TRANSITIONS.get((state, match.group(0)), "invalid")
        if state == "invalid":
            return False
        searched = searched or match.group(0) == "<search>"
        position = match.end()
    return state == "end" and searched and not text[position:].strip()


def qa_f1_format_score(
    transcript: str, golden_answers: str | Sequence[str], invalid_action: bool = False
) -> tuple[float, bool]:
    """``(F1, format_valid)`` of one transcript; the reward is ``F1 * format_valid``."""
    return answer_f1(transcript, golden_answers), is_valid_format(transcript, invalid_action=invalid_action)


def _golds(value: Any) -> list[str] | None:
    if value is None:
        return None
    golds = [value] if isinstance(value, str) else [str(g) for g in value]
    return golds or None


def make_qa_f1_format_reward(prepend_think_token: bool = False) -> Callable[..., list[float | None]]:
    """A reward function with TRL's signature computing answer F1 x format validity (see the module docstring).

    Args:
        prepend_think_token: whether the rollout ended the prompt with ``<think>``
            (``calibadv_prepend_think_token``); used only when no ``calibadv_transcript`` is given, to rebuild the
            transcript from the completion.

    The returned function reads these dataset columns / rollout fields (keyword lists, TRL's convention):

    * ``golden_answers`` (required column): list[str] of accepted aliases per row (a plain string is one alias).
      A row whose value is None or an empty list is unscorable and gets None.
    * ``calibadv_transcript`` (optional, from the CalibAdv rollout): the transcript to score; otherwise the
      completion text (the last message's content for conversational completions).
    * ``calibadv_invalid_action`` (optional, from the CalibAdv rollout): True makes the format invalid.

    Raises:
        ValueError: if the dataset has no ``golden_answers`` column.
    """

    def qa_f1_format(
        prompts: Sequence[Any],
        completions: Sequence[Any],
        golden_answers: Sequence[Any] | None = None,
        calibadv_transcript: Sequence[str | None] | None = None,
        calibadv_invalid_action: Sequence[bool | None] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        if golden_answers is None:
            raise ValueError(
                "The `qa_f1_format` reward needs a `golden_answers` column (list[str] of accepted answers per row)."
            )
        rewards: list[float | None] = []
        for i, completion in enumerate(completions):
            golds = _golds(golden_answers[i])
            if golds is None:
                rewards.append(None)
                continue
            transcript = calibadv_transcript[i] if calibadv_transcript is not None else None
            if transcript is None:
                transcript = build_transcript(completion_text(completion), prepend_think_token)
            invalid = bool(calibadv_invalid_action[i]) if calibadv_invalid_action is not None else False
            f1, valid = qa_f1_format_score(transcript, golds, invalid)
            rewards.append(f1 if valid else 0.0)
        return rewards

    qa_f1_format.__name__ = "qa_f1_format_think" if prepend_think_token else "qa_f1_format"
    qa_f1_format.__qualname__ = qa_f1_format.__name__
    return qa_f1_format


#: Answer F1 x format validity, for rollouts that do not prepend ``<think>`` (TRL logs it as ``qa_f1_format``).
qa_f1_format_reward = make_qa_f1_format_reward(prepend_think_token=False)
