"""Offline generation of DIVA-GRPO's ``variants`` and ``hints`` columns with any chat model (spec §3.1, §4).

The DIVA trainer (``trainer: diva``) reads two optional list-of-string columns at training time: ``variants``
(rewordings of the problem that keep its answer) and ``hints`` (3-5 solution steps, shown as a partial solution to
hard problems). The paper generates both offline with an LLM; this module does the same with any chat model and
writes a dataset the trainer (or a recipe's ``dataset_name: DIR``) reads back directly.

Usage
-----
With a local Hugging Face model (``--model``, batched ``generate`` on the local GPU or CPU)::

    python -m trl_ext.curriculum.offline_variants --dataset FanqingM/MMK12 --split train \\
        --question-column question --answer-column answer \\
        --model Qwen/Qwen2.5-7B-Instruct --out data/mmk12-diva

With an OpenAI-compatible server (vLLM, TGI, SGLang; much faster for large datasets)::

    vllm serve Qwen/Qwen2.5-7B-Instruct --port 8000 &
    python -m trl_ext.curriculum.offline_variants --dataset FanqingM/MMK12 --split train \\
        --question-column question --answer-column answer \\
        --base-url http://localhost:8000 --server-model Qwen/Qwen2.5-7B-Instruct --out data/mmk12-diva

A dataset saved with ``Dataset.save_to_disk`` is read with ``load_from_disk``; anything else goes through
``datasets.load_dataset`` (``--config``, ``--data-files``). ``--limit 20`` is a cheap dry run; ``--backend
package.module:function`` plugs in any callable backend. The output directory holds Parquet shards named
``{split}-00000-of-0000N.parquet`` (images embedded), so ``datasets.load_dataset("data/mmk12-diva")["train"]`` or a
recipe with ``dataset_name: data/mmk12-diva`` reads it back with every original column plus ``variants``, ``hints``
and ``id`` (the row index as a string when the source has no ``id`` column). With MMK12's ``question`` column the
recipe also sets ``dataset_prompt_column: question`` so that the trainer gets its ``prompt``.

Python API
----------
* :func:`add_variant_columns` (``dataset, backend -> dataset``) is the whole pipeline on an in-memory dataset;
* a **backend** is any callable ``generate(conversations) -> texts`` that maps a list of chat conversations (each a
  list of ``{"role", "content"}`` messages) to one reply string per conversation: :class:`TransformersChatBackend`,
  :class:`OpenAICompatibleBackend`, or a plain function (tests use canned replies);
* :func:`rewording_messages` / :func:`hint_messages` build the instructions, :func:`parse_rewordings` /
  :func:`parse_hints` read the replies (never raising: an unreadable reply gives ``[]``).

Nothing heavy is imported at module import: ``datasets``, ``torch``, ``transformers`` and ``requests`` are imported
by the functions that need them.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from trl_ext.curriculum.variants import question_text

if TYPE_CHECKING:
    import datasets

__all__ = [
    "ChatBackend",
    "OpenAICompatibleBackend",
    "TransformersChatBackend",
    "add_variant_columns",
    "answer_leaks",
    "hint_messages",
    "load_source_dataset",
    "main",
    "HINT_MODES",
    "boxed_answer",
    "parse_hints",
    "parse_list",
    "parse_solution_steps",
    "solution_messages",
    "parse_rewordings",
    "rewording_messages",
    "summarize",
    "write_parquet",
]

logger = logging.getLogger(__name__)

Messages = list[dict[str, Any]]

DEFAULT_MIN_HINTS = 3
DEFAULT_MAX_HINTS = 5
#: ``hint_mode`` values: ``"withhold"`` (default) asks for steps that stop before the answer, given the answer;
#: ``"authors"`` follows the DIVA authors' pipeline: a full 3-5 step solution ending in ``\boxed{}``, without the
#: answer, kept only when its boxed answer matches the gold answer (the last step then states the answer, so the
#: largest negative offsets, which show every step, show the whole solution).
HINT_MODES = ("withhold", "authors")
#: Rewordings the authors ask for per problem (``--num-rewordings`` default in their mode).
AUTHORS_NUM_REWORDINGS = 5


@runtime_checkable
class ChatBackend(Protocol):
    """A generation backend: ``backend(conversations) -> texts``, one reply per conversation, in order.

    ``conversations`` is a list of chat conversations, each a list of ``{"role": ..., "content": str}`` messages
    (a system message, then one user message). Any callable with this signature is a backend, including a plain
    function.
    """

    def __call__(self, conversations: list[Messages]) -> list[str]: ...


# --------------------------------------------------------------------------------------------------------------------
# Instructions sent to the chat model
# --------------------------------------------------------------------------------------------------------------------

REWORDING_SYSTEM_PROMPT = (
    "You are a careful editor of math problems. You rewrite problems without changing their mathematical content."
)

REWORDING_TEMPLATE = """\
Rewrite the math problem below in {n} different ways.

Rules:
- Keep the meaning exactly: every given quantity, condition, variable name, and the question asked must stay the \
same, so that the answer does not change.
- Change only the wording and the sentence structure. Each rewording must differ from the original and from the \
other rewordings.
- Do not solve the problem, do not add hints, and do not state the answer.
- Keep mathematical notation (LaTeX) as written. Keep references to the figure or image (for example "as shown in \
the figure"), and keep answer options with their letters and contents unchanged.
- Each rewording must be a complete problem that can be read on its own.

Output exactly {n} rewordings as a numbered list ("1.", "2.", ...), each starting on a new line, and nothing else.

Problem:
{question}"""

HINT_SYSTEM_PROMPT = "You are a patient math teacher who writes short, correct step-by-step solutions."

HINT_TEMPLATE = """\
Here is a math problem{answer_clause}. The problem may refer to a figure that you cannot see; rely on the text\
{answer_reliance}.

Problem:
{question}
{answer_block}
Write a step-by-step solution split into {min_steps} to {max_steps} short steps. Each step is one or two sentences \
with the key idea or computation of that step.
Stop before the final answer: the last step leaves only the final computation or choice to the reader. No step may \
state the final answer{answer_repeat}, name the correct option, or use \\boxed.

Output only the steps as a numbered list ("1.", "2.", ...), one step per line, and nothing else."""


def rewording_messages(question: str, num_rewordings: int = 3) -> Messages:
    """The chat messages asking for ``num_rewordings`` rewordings of ``question`` that keep its meaning and answer.

    The model is asked for a numbered list (one rewording per item); :func:`parse_rewordings` reads the reply and
    also accepts a JSON list.
    """
    if not isinstance(num_rewordings, int) or num_rewordings < 1:
        raise ValueError(f"`num_rewordings` must be a positive integer, got {num_rewordings!r}")
    return [
        {"role": "system", "content": REWORDING_SYSTEM_PROMPT},
        {"role": "user", "content": REWORDING_TEMPLATE.format(n=num_rewordings, question=question.strip())},
    ]


def hint_messages(
    question: str,
    answer: str | None,
    *,
    min_steps: int = DEFAULT_MIN_HINTS,
    max_steps: int = DEFAULT_MAX_HINTS,
) -> Messages:
    """The chat messages asking for a ``min_steps``-``max_steps`` step solution that stops before the final answer.

    The correct final answer is given to the model (so that the steps head the right way) with the instruction not to
    state it; :func:`parse_hints` also drops any step that still leaks it. ``answer=None`` asks for a solution without
    a reference answer.
    """
    if not (isinstance(min_steps, int) and isinstance(max_steps, int) and 1 <= min_steps <= max_steps):
        raise ValueError(f"need 1 <= min_steps <= max_steps, got min_steps={min_steps!r}, max_steps={max_steps!r}")
    answer = None if answer is None or not str(answer).strip() else str(answer).strip()
    if answer is None:
        clause, reliance, block, repeat = "", "", "", ""
    else:
        clause = " and its correct final answer"
        reliance = " and on the given answer"
        block = f"\nCorrect final answer (for your guidance only): {answer}\n"
        repeat = f" ({answer})"
    text = HINT_TEMPLATE.format(
        answer_clause=clause,
        answer_reliance=reliance,
        question=question.strip(),
        answer_block=block,
        min_steps=min_steps,
        max_steps=max_steps,
        answer_repeat=repeat,
    )
    return [{"role": "system", "content": HINT_SYSTEM_PROMPT}, {"role": "user", "content": text}]


SOLUTION_TEMPLATE = """\
Here is a math problem. The problem may refer to a figure that you cannot see; rely on the text.

Problem:
{question}

Solve it in {min_steps} to {max_steps} short steps. Each step is one or two sentences with the key idea or computation \
of that step. The last step states the final answer as \\boxed{{...}}.

Output only the steps as a numbered list ("1.", "2.", ...), one step per line, and nothing else."""


def solution_messages(
    question: str, *, min_steps: int = DEFAULT_MIN_HINTS, max_steps: int = DEFAULT_MAX_HINTS
) -> Messages:
    """The authors' hint request (``hint_mode="authors"``): a complete ``min_steps``-``max_steps`` step solution whose
    last step gives the answer in ``\\boxed{}``. The answer is not given to the model; :func:`parse_solution_steps`
    keeps the solution only if its boxed answer matches the gold one."""
    if not (isinstance(min_steps, int) and isinstance(max_steps, int) and 1 <= min_steps <= max_steps):
        raise ValueError(f"need 1 <= min_steps <= max_steps, got min_steps={min_steps!r}, max_steps={max_steps!r}")
    text = SOLUTION_TEMPLATE.format(question=question.strip(), min_steps=min_steps, max_steps=max_steps)
    return [{"role": "system", "content": HINT_SYSTEM_PROMPT}, {"role": "user", "content": text}]


# --------------------------------------------------------------------------------------------------------------------
# Parsing the replies
# --------------------------------------------------------------------------------------------------------------------

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.S | re.I)
_CODE_FENCE = re.compile(r"^\s*```[\w+-]*\s*$", re.M)
# A list-item marker at the start of a line; which alternative matched is the item "style".
_LABEL_WORDS = r"(?:step|rewording|rephrasing|rewrite|variant|version|paraphrase|question|problem|hint)"
_MARKER = re.compile(
    r"^\s*(?:#+\s*|>\s*)?"
    r"(?:"
    r"(?P<label>(?:\*\*|__)?" + _LABEL_WORDS + r"\s*\d{1,2}\s*(?:\*\*|__)?\s*[:.)\-–—]\s*(?:\*\*|__)?)"
    r"|(?P<num>(?:\*\*|__)?(?:\(\d{1,2}\)|\d{1,2}[.):])(?:\*\*|__)?(?=\s|$))"
    r"|(?P<bullet>[-*•+–—](?=\s))"
    r")\s*",
    re.I,
)
# "Rewording:" / "Step:" labels left after a numeric marker ("1. Rewording: ...", "2. **Step 2:** ...").
_INNER_LABEL = re.compile(
    r"^(?:\*\*|__)?" + _LABEL_WORDS + r"\s*\d{0,2}\s*(?:\*\*|__)?\s*[:.)\-–—]\s*(?:\*\*|__)?\s*", re.I
)
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»", "`": "`"}
_TEXT_KEYS = ("text", "rewording", "question", "problem", "variant", "step", "hint", "content")
_LIST_KEYS = ("rewordings", "variants", "questions", "paraphrases", "steps", "hints", "items", "solution")


def _strip_wrapping(text: str) -> str:
    """Remove ``<think>`` blocks and code-fence lines."""
    text = _THINK_BLOCK.sub("", text)
    if "</think>" in text.lower():  # the chat template opened the think block in the prompt: keep what follows
        text = re.split(r"</think>", text, flags=re.I)[-1]
    if "<think>" in text.lower():  # a think block that never closed (the reply was cut): nothing after it counts
        text = re.split(r"<think>", text, flags=re.I)[0]
    return _CODE_FENCE.sub("", text)


def _clean_item(item: str, keep_newlines: bool = False) -> str:
    """Strip labels, markdown bold around the whole item, surrounding quotes and whitespace; join wrapped lines."""
    text = ("\n" if keep_newlines else " ").join(line.strip() for line in item.strip().splitlines() if line.strip())
    text = _INNER_LABEL.sub("", text).strip()
    for marker in ("**", "__"):
        if text.startswith(marker) and text.endswith(marker) and len(text) > 2 * len(marker):
            text = text[len(marker) : -len(marker)].strip()
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] == _QUOTES[text[0]]:
        text = text[1:-1].strip()
    return text


def _fix_latex_escapes(text: str) -> str:
    r"""Double the backslashes of LaTeX commands so that JSON keeps them (``"\frac"`` is a form feed in JSON).

    A backslash is kept as a JSON escape only for ``\\``, ``\"``, ``\/``, ``\uXXXX`` and ``\b \f \n \r \t`` *not*
    followed by a letter (``\frac``, ``\times``, ``\neq``, ``\right``, ``\beta`` are LaTeX).
    """
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "\\":
            out.append(char)
            i += 1
            continue
        nxt = text[i + 1] if i + 1 < len(text) else ""
        after = text[i + 2] if i + 2 < len(text) else ""
        if nxt in ("\\", '"', "/"):
            out.append(char + nxt)
            i += 2
        elif nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 2 : i + 6] or ""):
            out.append(text[i : i + 6])
            i += 6
        elif nxt in "bfnrt" and nxt and not after.isalpha():
            out.append(char + nxt)
            i += 2
        else:
            out.append("\\\\")
            i += 1
    return "".join(out)


def _items_from_structure(value: Any) -> list[str] | None:
    """The strings of a parsed JSON value (a list, or a dict holding one), or ``None`` if it is not list-like."""
    if isinstance(value, Mapping):
        for key in _LIST_KEYS:
            if isinstance(value.get(key), list):
                return _items_from_structure(value[key])
        lists = [v for v in value.values() if isinstance(v, list)]
        return _items_from_structure(lists[0]) if len(lists) == 1 else None
    if not isinstance(value, list):
        return None
    items: list[str] = []
    for element in value:
        if isinstance(element, str):
            items.append(element)
        elif isinstance(element, Mapping):
            texts = [element[k] for k in _TEXT_KEYS if isinstance(element.get(k), str)]
            if not texts:
                texts = [v for v in element.values() if isinstance(v, str)]
            if texts:
                items.append(texts[0])
    return items


def _parse_json_list(text: str) -> list[str] | None:
    """Items of a JSON (or Python-literal) list of strings in ``text``; ``None`` if there is none.

    The list (or a dict holding one) must open at the start of a line, so that brackets inside a numbered item
    (an interval ``[0, 1]``, a citation) are not mistaken for the reply's list. A list with no string element (a
    list of numbers) does not count either.
    """
    for opener, closer in (("[", "]"), ("{", "}")):
        start = re.search(r"^[ \t]*" + re.escape(opener), text, flags=re.M)
        end = text.rfind(closer)
        if start is None or end < start.end():
            continue
        candidate = text[start.end() - 1 : end + 1]
        for loader in (lambda s: json.loads(_fix_latex_escapes(s)), json.loads, ast.literal_eval):
            try:
                value = loader(candidate)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            items = _items_from_structure(value)
            if items is not None and (items or value in ([], {})):
                return items
    return None


def _parse_marked_lines(text: str) -> list[str]:
    """Items of a numbered / bulleted / "Step N:" list; lines before the first marker (a preamble) are dropped.

    Only lines with the same marker style as the first item start a new item (so sub-bullets under numbered steps
    and wrapped lines are continuations of their item). After the last item, a blank line followed by an unindented
    line ends the list (closing remarks). Text with no marker at all gives ``[]``: an unstructured
    reply is more often chatter or a refusal than a usable list.
    """
    lines = text.splitlines()
    matches = [_MARKER.match(line) if line.strip() else None for line in lines]
    first = next((i for i, match in enumerate(matches) if match is not None), None)
    if first is None:
        return []
    style = matches[first].lastgroup
    starts = [i for i, match in enumerate(matches) if match is not None and match.lastgroup == style]
    items: list[list[str]] = []
    after_blank = False
    for index in range(first, len(lines)):
        line, match = lines[index], matches[index]
        if not line.strip():
            after_blank = True
            continue
        if match is not None and match.lastgroup == style:
            items.append([line[match.end() :]])
        elif after_blank and index > starts[-1] and not line[:1].isspace():
            break  # unindented text after a blank line past the last item: closing chatter ("Hope this helps!")
        else:
            items[-1].append(line)
        after_blank = False
    return ["\n".join(item_lines) for item_lines in items]


def parse_list(text: Any, *, keep_newlines: bool = False) -> list[str]:
    """The items of a list reply: a JSON list (possibly in a code fence or after a preamble, or a dict holding one
    list), else numbered / bulleted / ``Step N:`` lines. Items are cleaned (numbering, ``Step N:`` labels, markdown
    bold and surrounding quotes removed; wrapped lines joined with a space) and empty items dropped. ``<think>``
    blocks are ignored. Never raises: anything unreadable (``None``, non-text, prose) gives ``[]``.

    ``keep_newlines=True`` joins the lines of a multi-line item with newlines instead of spaces (a rewording whose
    answer options sit on their own lines keeps its layout).
    """
    if not isinstance(text, str) or not text.strip():
        return []
    try:
        body = _strip_wrapping(text)
        items = _parse_json_list(body) if ("[" in body or "{" in body) else None
        if items is None:
            items = _parse_marked_lines(body)
        return [cleaned for cleaned in (_clean_item(item, keep_newlines) for item in items) if cleaned]
    except Exception:  # noqa: BLE001 - a parser for model output must never take the run down
        logger.debug("parse_list: unreadable reply %r", text[:200], exc_info=True)
        return []


def _norm(text: str) -> str:
    """Comparison key: case-folded, whitespace collapsed, trailing punctuation dropped."""
    return re.sub(r"\s+", " ", text).strip().rstrip(".?!;:").strip().casefold()


def _normalize_answer(answer: Any) -> str:
    """The answer as a plain string: lists joined with ", ", ``$...$`` and ``\\boxed{...}`` wrappers removed."""
    if answer is None:
        return ""
    if isinstance(answer, (list, tuple)):
        answer = ", ".join(str(a) for a in answer if a is not None)
    text = str(answer).strip()
    while len(text) >= 2 and text[0] == "$" and text[-1] == "$":
        text = text[1:-1].strip()
    match = re.fullmatch(r"\\boxed\{(.*)\}", text, flags=re.S)
    if match:
        text = match.group(1).strip()
    return text


def answer_leaks(text: str, answer: Any) -> bool:
    """Whether ``text`` contains the final answer verbatim (the leak rule of :func:`parse_hints`).

    The answer is normalised (``$...$`` and ``\\boxed{}`` wrappers removed, list answers joined with ", "); answers of
    at most 1 character (an option letter "B", a digit) are never checked, since they occur everywhere. The test is
    case-sensitive substring containment, on the raw strings and again with all whitespace removed from both (so
    ``x = 12`` leaks the answer ``x=12``).
    """
    needle = _normalize_answer(answer)
    if len(needle) <= 1:
        return False
    if needle in text:
        return True
    squeezed = re.sub(r"\s+", "", needle)
    return len(squeezed) > 1 and squeezed in re.sub(r"\s+", "", text)


def parse_rewordings(text: Any, original: str, max_count: int = 3, *, answer: Any = None) -> list[str]:
    """The rewordings in a reply to :func:`rewording_messages` (see :func:`parse_list` for the accepted formats).

    Dropped: empty items, duplicates and items identical to ``original`` (compared case-insensitively, whitespace
    collapsed, trailing punctuation ignored), and, when ``answer`` is given and does not already occur in
    ``original``, items that contain it (:func:`answer_leaks`: the model solved the problem instead of rewording it).
    At most ``max_count`` are kept, in reply order. Never raises.
    """
    original = original if isinstance(original, str) else ""
    check_answer = answer is not None and not answer_leaks(original, answer)
    seen = {_norm(original)}
    kept: list[str] = []
    for item in parse_list(text, keep_newlines=True):
        key = _norm(item)
        if not key or key in seen:
            continue
        if check_answer and answer_leaks(item, answer):
            continue
        seen.add(key)
        kept.append(item)
        if len(kept) >= max_count:
            break
    return kept


_ANNOUNCES_ANSWER = re.compile(r"\\boxed|\bfinal answer\b|\bthe answer is\b|^\s*answer\s*[:：]", re.I)


def parse_hints(text: Any, answer: Any = None, max_steps: int = DEFAULT_MAX_HINTS, *, question: str = "") -> list[str]:
    """The solution steps in a reply to :func:`hint_messages` (see :func:`parse_list` for the accepted formats).

    Dropped, in this order:

    * empty steps and duplicates (case-insensitive, whitespace collapsed);
    * steps that announce the answer: containing ``\\boxed``, "final answer", "the answer is", or starting with
      "Answer:";
    * **the answer-leak rule**: steps containing the final ``answer`` verbatim (:func:`answer_leaks`: answers longer
      than 1 character only, whitespace-insensitive). The rule is skipped when the answer already occurs in
      ``question`` (e.g. the answer "AB" of a geometry problem that names the segment AB), where it would drop
      legitimate steps.

    The remaining steps keep their order; at most ``max_steps`` are kept (the first ones). Fewer than 3 steps are
    kept as they are: a short partial solution is still a usable hint. Never raises.
    """
    check_answer = answer is not None and not answer_leaks(question if isinstance(question, str) else "", answer)
    seen: set[str] = set()
    kept: list[str] = []
    for item in parse_list(text):
        key = _norm(item)
        if not key or key in seen:
            continue
        seen.add(key)
        if _ANNOUNCES_ANSWER.search(item) or (check_answer and answer_leaks(item, answer)):
            continue
        kept.append(item)
        if len(kept) >= max_steps:
            break
    return kept


def boxed_answer(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` in ``text`` (nested braces balanced), or ``None``."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for index in range(begin, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            if depth == 0:
                return text[begin:index].strip()
            depth -= 1
    return None


def _answer_key(answer: Any) -> str:
    """Comparison key of an answer: normalised, ``$``/``\\boxed`` removed, spaces dropped, numbers canonical."""
    text = re.sub(r"\s+", "", _normalize_answer(answer)).rstrip(".").casefold()
    text = text.replace("\\left", "").replace("\\right", "").replace("\\dfrac", "\\frac")
    try:
        number = float(text.replace(",", "")) if re.fullmatch(r"[-+]?[\d,]*\.?\d+(e[-+]?\d+)?", text) else None
    except ValueError:  # pragma: no cover - the pattern only admits numbers
        number = None
    if number is not None and math.isfinite(number):
        return repr(round(number, 9))
    return text


def parse_solution_steps(text: Any, answer: Any, *, question: str = "") -> list[str]:
    """The steps of a reply to :func:`solution_messages`, kept only when the solution is right.

    The reply's last ``\\boxed{}`` must match ``answer`` (both normalised: ``$``/``\\boxed`` wrappers, spaces and
    case ignored, numbers compared as numbers, so "2.0" matches "2"; no symbolic equivalence, so "0.5" does not
    match "\\frac{1}{2}"); otherwise, or without a boxed answer, ``[]``. Empty and duplicate steps are dropped; every other step is kept, in order,
    including the final one that states the answer (this mode shows whole solutions at the largest offsets). Never
    raises.
    """
    if not isinstance(text, str):
        return []
    reply = _THINK_BLOCK.sub("", text)
    boxed = boxed_answer(reply)
    if boxed is None or not _normalize_answer(answer) or _answer_key(boxed) != _answer_key(answer):
        return []
    seen: set[str] = set()
    kept: list[str] = []
    for item in parse_list(reply, keep_newlines=False):
        key = _norm(item)
        if key and key not in seen:
            seen.add(key)
            kept.append(item)
    return kept


# --------------------------------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------------------------------


class TransformersChatBackend:
    """A local Hugging Face chat model: ``tokenizer.apply_chat_template`` + ``model.generate``, batched.

    Conversations are rendered with the tokenizer's chat template (with the generation prompt), sorted by length,
    left-padded into batches of ``batch_size`` and decoded without special tokens; replies come back in input order.
    Sampling uses ``temperature`` (``0`` = greedy) and ``top_p``; ``seed`` seeds torch once at construction, so a
    run is reproducible on the same hardware.

    Args:
        model_name_or_path: a Hub id or a local checkpoint of a causal LM with a chat template (an *instruct* model).
        max_new_tokens: reply length limit, in tokens (default 1024).
        temperature: sampling temperature; ``0`` for greedy decoding (default 0.7).
        top_p: nucleus sampling (default 0.95; ignored when greedy).
        batch_size: conversations per ``generate`` call (default 16).
        device: ``"cuda"``, ``"cuda:1"``, ``"cpu"``, ...; default CUDA when available, else CPU.
        dtype: passed to ``from_pretrained`` (default ``"auto"``: the checkpoint's dtype).
        trust_remote_code: passed to ``from_pretrained``.
        seed: torch seed (``None`` to leave the RNG alone).
    """

    def __init__(
        self,
        model_name_or_path: str,
        max_new_tokens: int = 1024,
        temperature: float = 0.7,
        batch_size: int = 16,
        device: str | None = None,
        *,
        top_p: float = 0.95,
        dtype: Any = "auto",
        trust_remote_code: bool = False,
        seed: int | None = 0,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` must be a positive integer, got {max_new_tokens!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}")
        if temperature < 0:
            raise ValueError(f"`temperature` must be >= 0, got {temperature!r}")
        self.model_name_or_path = str(model_name_or_path)
        self.max_new_tokens = max_new_tokens
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.batch_size = batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if seed is not None:
            torch.manual_seed(seed)
        self.tokenizer = AutoTokenizer.from_pretrained(
            self.model_name_or_path, padding_side="left", trust_remote_code=trust_remote_code
        )
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"TransformersChatBackend: the tokenizer of {self.model_name_or_path!r} has no chat template; "
                "use an instruct/chat model"
            )
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(
            self.model_name_or_path, dtype=dtype, trust_remote_code=trust_remote_code
        ).to(self.device)
        self.model.eval()

    def __repr__(self) -> str:
        return f"TransformersChatBackend({self.model_name_or_path!r}, device={self.device!r})"

    def _render(self, messages: Messages) -> str:
        """The prompt text of one conversation; system messages are folded into the first user message for chat
        templates that reject the system role (Gemma's, for instance)."""
        messages = list(messages)
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:
            system = "\n\n".join(str(m["content"]) for m in messages if m.get("role") == "system")
            rest = [dict(m) for m in messages if m.get("role") != "system"]
            if not system or not rest:
                raise
            rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
            return self.tokenizer.apply_chat_template(rest, tokenize=False, add_generation_prompt=True)

    def __call__(self, conversations: list[Messages]) -> list[str]:
        """One reply per conversation, in input order."""
        import torch

        texts = [self._render(messages) for messages in conversations]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        replies: list[str] = [""] * len(texts)
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
            if self.temperature > 0
            else {"do_sample": False}
        )
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            encoded = self.tokenizer(
                [texts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.device)
            with torch.inference_mode():
                output = self.model.generate(
                    **encoded,
                    max_new_tokens=self.max_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id,
                    **sampling,
                )
            new_tokens = output[:, encoded["input_ids"].shape[1] :]
            for i, reply in zip(chunk, self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                replies[i] = reply
        return replies

    generate = __call__


class OpenAICompatibleBackend:
    """A chat model behind an OpenAI-compatible server (vLLM, TGI, SGLang, ...): ``POST {base_url}/v1/chat/completions``.

    Each conversation is one request; up to ``max_concurrency`` requests are in flight at once (servers such as vLLM
    batch them). Connection errors, timeouts, HTTP 429 and 5xx are retried ``max_retries`` times with exponential
    backoff (``retry_backoff``, doubled each time); other HTTP errors fail at once. Either way the error names the URL.
    A reply whose ``content`` is null gives ``""``.

    Args:
        base_url: the server root, e.g. ``http://localhost:8000`` (a trailing ``/v1`` is accepted too).
        model: the model name the server expects (``vllm serve NAME`` -> ``NAME``).
        api_key: sent as ``Authorization: Bearer ...`` when given.
        timeout: seconds per request (default 300).
        max_retries: retries after the first attempt (default 3).
        temperature, top_p, max_tokens: sampling parameters of every request (defaults 0.7, 0.95, 1024).
        max_concurrency: parallel requests (default 8).
        retry_backoff: the first retry's delay in seconds (default 1.0).
        extra_body: extra JSON fields merged into every request (e.g. ``{"seed": 0}``).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 300.0,
        max_retries: int = 3,
        *,
        temperature: float = 0.7,
        top_p: float = 0.95,
        max_tokens: int = 1024,
        max_concurrency: int = 8,
        retry_backoff: float = 1.0,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.strip():
            raise ValueError("`base_url` must be a non-empty URL such as 'http://localhost:8000'")
        if not isinstance(model, str) or not model.strip():
            raise ValueError("`model` must name the served model")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"`max_retries` must be an integer >= 0, got {max_retries!r}")
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"`max_concurrency` must be a positive integer, got {max_concurrency!r}")
        root = base_url.strip().rstrip("/")
        if root.endswith("/v1"):
            root = root[: -len("/v1")]
        self.url = f"{root}/v1/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.max_concurrency = max_concurrency
        self.retry_backoff = float(retry_backoff)
        self.payload_defaults: dict[str, Any] = {
            "model": model,
            "temperature": float(temperature),
            "top_p": float(top_p),
            "max_tokens": int(max_tokens),
            **dict(extra_body or {}),
        }

    def __repr__(self) -> str:
        return f"OpenAICompatibleBackend(url={self.url!r}, model={self.model!r})"

    def _complete(self, messages: Messages) -> str:
        try:
            import requests
        except ImportError as error:  # pragma: no cover - requests ships with transformers' hub client
            raise ImportError("OpenAICompatibleBackend needs `requests`: pip install requests") from error

        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        payload = {**self.payload_defaults, "messages": list(messages)}
        attempts = self.max_retries + 1
        last_error = "no attempt made"
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.retry_backoff * 2 ** (attempt - 1))
            try:
                response = requests.post(self.url, json=payload, headers=headers, timeout=self.timeout)
            except requests.RequestException as error:
                last_error = f"{type(error).__name__}: {error}"
                continue
            if response.status_code == 429 or response.status_code >= 500:
                last_error = f"HTTP {response.status_code}: {response.text[:300]}"
                continue
            if response.status_code >= 400:
                raise RuntimeError(
                    f"OpenAICompatibleBackend: POST {self.url} failed with HTTP {response.status_code} "
                    f"(model {self.model!r}): {response.text[:500]}"
                )
            try:
                content = response.json()["choices"][0]["message"].get("content")
            except (ValueError, KeyError, IndexError, TypeError, AttributeError) as error:
                raise RuntimeError(
                    f"OpenAICompatibleBackend: POST {self.url} returned an unexpected body "
                    f"({type(error).__name__}): {response.text[:500]}"
                ) from error
            return content if isinstance(content, str) else ""
        raise RuntimeError(
            f"OpenAICompatibleBackend: POST {self.url} failed after {attempts} attempt(s) "
            f"(max_retries={self.max_retries}); last error: {last_error}"
        )

    def __call__(self, conversations: list[Messages]) -> list[str]:
        """One reply per conversation, in input order."""
        conversations = list(conversations)
        if len(conversations) <= 1 or self.max_concurrency == 1:
            return [self._complete(messages) for messages in conversations]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(conversations))) as pool:
            return list(pool.map(self._complete, conversations))

    generate = __call__


def _generate_fn(backend: Any) -> Callable[[list[Messages]], list[str]]:
    if callable(backend):
        return backend
    generate = getattr(backend, "generate", None)
    if callable(generate):
        return generate
    raise ValueError(
        f"`backend` must be a callable (conversations -> list of reply strings) or have a `generate` method, "
        f"got {type(backend).__name__}"
    )


def _backend_name(backend: Any) -> str:
    name = getattr(backend, "__qualname__", None) or getattr(backend, "__name__", None)
    if name is None:
        return repr(backend)
    module = getattr(backend, "__module__", None)
    return f"{module}.{name}" if module else name


# --------------------------------------------------------------------------------------------------------------------
# Adding the columns
# --------------------------------------------------------------------------------------------------------------------


def _string_list_feature():
    from datasets import Value

    try:
        from datasets import List
    except ImportError:  # datasets < 4
        from datasets import Sequence as List
    return List(Value("string"))


def _existing_strings(value: Any) -> list[str]:
    """A stored list column as non-empty strings (anything that is not a list of strings counts as empty)."""
    if value is None or isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return []
    return [item for item in value if isinstance(item, str) and item.strip()]


def add_variant_columns(
    dataset: datasets.Dataset,
    backend: Any,
    *,
    num_rewordings: int = 3,
    question_column: str | None = None,
    answer_column: str | None = "answer",
    id_column: str = "id",
    overwrite: bool = False,
    batch_size: int = 32,
    min_hints: int = DEFAULT_MIN_HINTS,
    max_hints: int = DEFAULT_MAX_HINTS,
    progress: bool = True,
    hint_mode: str = "withhold",
) -> datasets.Dataset:
    """Add DIVA's ``variants`` (rewordings) and ``hints`` (solution steps) columns, generated by ``backend``.

    For each row, the question is ``row[question_column]`` when given, else :func:`~trl_ext.curriculum.variants.
    question_text` of ``row["prompt"]`` (a standard prompt, or the last user message of a conversational one). The
    backend gets :func:`rewording_messages` and :func:`hint_messages` (with ``row[answer_column]``) conversations,
    ``batch_size`` rows (up to ``2 * batch_size`` conversations) per call, and its replies go through
    :func:`parse_rewordings` (at most ``num_rewordings``) and :func:`parse_hints` (at most ``max_hints``). A reply that
    cannot be parsed gives an empty list; the trainer treats an empty list as "no rewordings" / "no hints".

    Every other column is kept as is (images are never decoded). If ``id_column`` is missing, it is added with the
    row index as a string (and logged).

    Args:
        dataset: a ``datasets.Dataset`` (one split).
        backend: a callable ``conversations -> replies`` (see :class:`ChatBackend`), or an object with ``generate``.
        num_rewordings: rewordings asked for per row (``0``: no rewording requests; the column is still written).
        question_column: the column holding the question text; default ``None`` = use ``prompt``.
        answer_column: the column holding the final answer, given to the model for the hints and used by the
            answer-leak rule; ``None`` asks for hints without an answer. Rows whose answer is empty get no hints.
        id_column: the problem id column (the DIVA trainer reads ``id``).
        overwrite: ``False`` (default) keeps the existing non-empty ``variants`` / ``hints`` of a row and does not
            ask for them again (so a rerun fills only the gaps); ``True`` regenerates everything.
        batch_size: rows per backend call.
        min_hints, max_hints: the requested step range (default 3 to 5); at most ``max_hints`` steps are kept
            (``"withhold"``; the authors' mode keeps a verified solution whole).
        progress: show a progress bar.
        hint_mode: ``"withhold"`` (default): :func:`hint_messages` with the answer, steps that stop before it
            (:func:`parse_hints`); ``"authors"``: the DIVA authors' pipeline, :func:`solution_messages` without the
            answer and :func:`parse_solution_steps`, which keeps a solution only if its boxed answer is right (needs
            ``answer_column``).

    Returns:
        A new dataset with the columns ``variants`` and ``hints`` (``list[str]``; replaced when they existed) and
        ``id_column``.

    Raises:
        ValueError: a missing question, prompt or answer column (named), a non-``Dataset`` input, a bad argument, or
            a backend that returns the wrong number of replies (named).
    """
    from datasets import Dataset

    if not isinstance(dataset, Dataset):
        raise ValueError(
            f"`dataset` must be a datasets.Dataset (one split), got {type(dataset).__name__}; "
            "for a DatasetDict pass dataset['train']"
        )
    if not isinstance(num_rewordings, int) or isinstance(num_rewordings, bool) or num_rewordings < 0:
        raise ValueError(f"`num_rewordings` must be an integer >= 0, got {num_rewordings!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}")
    if not (isinstance(min_hints, int) and isinstance(max_hints, int) and 1 <= min_hints <= max_hints):
        raise ValueError(f"need 1 <= min_hints <= max_hints, got min_hints={min_hints!r}, max_hints={max_hints!r}")
    if hint_mode not in HINT_MODES:
        raise ValueError(f"`hint_mode` must be one of {HINT_MODES}, got {hint_mode!r}")
    if hint_mode == "authors" and answer_column is None:
        raise ValueError(
            "hint_mode='authors' checks each solution against the gold answer: give answer_column "
            "(CLI: --answer-column, without --no-answer)"
        )
    generate = _generate_fn(backend)
    backend_name = _backend_name(backend)
    columns = dataset.column_names
    if question_column is not None:
        if question_column not in columns:
            raise ValueError(f"question_column: the dataset has no column {question_column!r} (columns: {columns})")
        source_column = question_column
    elif "prompt" in columns:
        source_column = "prompt"
    else:
        raise ValueError(
            f"the dataset has no `prompt` column and no `question_column` was given (columns: {columns}); "
            "pass question_column= (CLI: --question-column) naming the column with the question text"
        )
    if answer_column is not None and answer_column not in columns:
        raise ValueError(
            f"answer_column: the dataset has no column {answer_column!r} (columns: {columns}); "
            "pass the answer column, or answer_column=None (CLI: --no-answer) for hints without an answer"
        )
    if not id_column:
        raise ValueError("`id_column` must be a column name")

    read = [source_column]
    if answer_column is not None and answer_column != source_column:
        read.append(answer_column)
    keep = {name: name in columns and not overwrite for name in ("variants", "hints")}
    read += [name for name, flag in keep.items() if flag]

    variants_out: list[list[str]] = []
    hints_out: list[list[str]] = []
    empty_questions = 0
    missing_answers = 0
    rejected_solutions = 0
    num_rows = len(dataset)
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=num_rows, desc="variants+hints", unit="row")
        except ImportError:  # pragma: no cover
            bar = None
    view = dataset.select_columns(read)
    for batch in view.iter(batch_size=batch_size):
        size = len(batch[source_column])
        requests_: list[Messages] = []
        slots: list[tuple[int, str, str, Any]] = []  # (row in batch, kind, question, answer)
        batch_variants: list[list[str]] = []
        batch_hints: list[list[str]] = []
        for i in range(size):
            raw = batch[source_column][i]
            question = raw if question_column is not None else question_text(raw)
            question = question.strip() if isinstance(question, str) else ""
            answer = batch[answer_column][i] if answer_column is not None else None
            has_answer = answer_column is None or bool(_normalize_answer(answer))
            existing_variants = _existing_strings(batch["variants"][i]) if keep["variants"] else []
            existing_hints = _existing_strings(batch["hints"][i]) if keep["hints"] else []
            batch_variants.append(existing_variants)
            batch_hints.append(existing_hints)
            if not question:
                empty_questions += 1
                continue
            if num_rewordings > 0 and not existing_variants:
                requests_.append(rewording_messages(question, num_rewordings))
                slots.append((i, "variants", question, answer))
            if not existing_hints:
                if has_answer and hint_mode == "authors":
                    requests_.append(solution_messages(question, min_steps=min_hints, max_steps=max_hints))
                    slots.append((i, "hints", question, answer))
                elif has_answer:
                    hint_answer = None if answer_column is None else _normalize_answer(answer)
                    requests_.append(hint_messages(question, hint_answer, min_steps=min_hints, max_steps=max_hints))
                    slots.append((i, "hints", question, answer))
                else:
                    missing_answers += 1
        if requests_:
            replies = generate(requests_)
            if (
                not isinstance(replies, Sequence)
                or isinstance(replies, (str, bytes))
                or len(replies) != len(requests_)
            ):
                got = len(replies) if isinstance(replies, Sequence) else type(replies).__name__
                raise ValueError(
                    f"backend {backend_name} returned {got} replies for {len(requests_)} conversations; "
                    "a backend must return exactly one string per conversation, in order"
                )
            for (i, kind, question, answer), reply in zip(slots, replies):
                if kind == "variants":
                    batch_variants[i] = parse_rewordings(reply, question, num_rewordings, answer=answer)
                elif hint_mode == "authors":
                    batch_hints[i] = parse_solution_steps(reply, answer, question=question)
                    rejected_solutions += not batch_hints[i]
                else:
                    batch_hints[i] = parse_hints(reply, answer, max_hints, question=question)
        variants_out.extend(batch_variants)
        hints_out.extend(batch_hints)
        if bar is not None:
            bar.update(size)
    if bar is not None:
        bar.close()
    if empty_questions:
        logger.warning(
            "add_variant_columns: %d row(s) have an empty question; they get no variants or hints", empty_questions
        )
    if rejected_solutions:
        logger.warning(
            "add_variant_columns: %d solution(s) had no boxed answer matching `%s`; those rows get no hints",
            rejected_solutions,
            answer_column,
        )
    if missing_answers:
        logger.warning(
            "add_variant_columns: %d row(s) have an empty `%s`; they get no hints", missing_answers, answer_column
        )

    feature = _string_list_feature()
    result = dataset.remove_columns([name for name in ("variants", "hints") if name in columns])
    result = result.add_column("variants", variants_out, feature=feature)
    result = result.add_column("hints", hints_out, feature=feature)
    if id_column not in columns:
        logger.warning(
            "add_variant_columns: the dataset has no `%s` column; adding one with the row index as a string "
            "('0', '1', ... for its %d row(s))",
            id_column,
            num_rows,
        )
        result = result.add_column(id_column, [str(i) for i in range(num_rows)])
    else:
        ids = [str(value) for value in dataset[id_column]]
        duplicates = len(ids) - len(set(ids))
        if duplicates:
            logger.warning(
                "add_variant_columns: column `%s` has %d duplicate value(s); the DIVA trainer requires unique ids",
                id_column,
                duplicates,
            )
    return result


def summarize(dataset: datasets.Dataset) -> dict[str, Any]:
    """Counts over the ``variants`` and ``hints`` columns: rows, mean per row, rows with none, rows with neither."""
    variants = [len(_existing_strings(v)) for v in dataset["variants"]]
    hints = [len(_existing_strings(h)) for h in dataset["hints"]]
    rows = len(variants)
    return {
        "rows": rows,
        "mean_rewordings_per_row": sum(variants) / rows if rows else 0.0,
        "mean_hints_per_row": sum(hints) / rows if rows else 0.0,
        "rows_without_rewordings": sum(1 for n in variants if n == 0),
        "rows_without_hints": sum(1 for n in hints if n == 0),
        "rows_without_either": sum(1 for v, h in zip(variants, hints) if v == 0 and h == 0),
    }


# --------------------------------------------------------------------------------------------------------------------
# Loading and writing
# --------------------------------------------------------------------------------------------------------------------


def _is_saved_dataset_dir(path: str) -> bool:
    return os.path.isdir(path) and (
        os.path.isfile(os.path.join(path, "state.json")) or os.path.isfile(os.path.join(path, "dataset_dict.json"))
    )


def load_source_dataset(
    name_or_path: str,
    *,
    config: str | None = None,
    split: str = "train",
    data_files: Any = None,
    cache_dir: str | None = None,
) -> datasets.Dataset:
    """One split of a dataset: ``load_from_disk`` for a directory written by ``save_to_disk`` (a ``Dataset`` is used
    as is, a ``DatasetDict`` gives ``split``), else ``datasets.load_dataset(name_or_path, config, split=split)``."""
    import datasets as hf_datasets

    if _is_saved_dataset_dir(name_or_path):
        loaded = hf_datasets.load_from_disk(name_or_path)
        if isinstance(loaded, hf_datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"--split: {name_or_path} has no split {split!r} (splits: {list(loaded)})")
            return loaded[split]
        return loaded
    return hf_datasets.load_dataset(name_or_path, name=config, split=split, data_files=data_files, cache_dir=cache_dir)


def write_parquet(
    dataset: datasets.Dataset, out_dir: str, split: str = "train", *, max_shard_size: int | str = "500MB"
) -> list[str]:
    """Write ``dataset`` to ``out_dir/{split}-XXXXX-of-NNNNN.parquet`` shards; return the file paths.

    Image (and other decodable) columns are embedded as bytes first, as ``push_to_hub`` does, so the files are
    self-contained. Earlier shards of the same split in ``out_dir`` are removed, and each shard is written to a
    temporary name and renamed, so a reader never sees a mix of runs. ``datasets.load_dataset(out_dir)[split]``
    reads the result back with its features (images included).
    """
    from datasets.features.features import require_decoding
    from datasets.table import embed_table_storage
    from datasets.utils.py_utils import convert_file_size_to_int

    if not re.fullmatch(r"\w+", split or ""):
        raise ValueError(f"the output split name must be letters, digits or underscores, got {split!r}")
    os.makedirs(out_dir, exist_ok=True)
    stale = re.compile(rf"^{re.escape(split)}-\d{{5}}-of-\d{{5}}\.parquet$")
    for name in os.listdir(out_dir):
        if stale.match(name):
            os.remove(os.path.join(out_dir, name))
    num_shards = max(1, int(dataset._estimate_nbytes() / convert_file_size_to_int(max_shard_size)) + 1)
    num_shards = min(num_shards, max(len(dataset), 1))
    embed = any(require_decoding(feature, ignore_decode_attribute=True) for feature in dataset.features.values())
    paths = []
    for index in range(num_shards):
        shard = dataset.shard(num_shards=num_shards, index=index, contiguous=True)
        if embed:
            shard = shard.with_format("arrow").map(embed_table_storage, batched=True, keep_in_memory=True)
            shard = shard.with_format(None)
        path = os.path.join(out_dir, f"{split}-{index:05d}-of-{num_shards:05d}.parquet")
        shard.to_parquet(path + ".tmp")
        os.replace(path + ".tmp", path)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------------


def _resolve_callable(spec: str) -> Callable:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--backend must be 'package.module:function', got {spec!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trl_ext.curriculum.offline_variants",
        description="Generate DIVA-GRPO's `variants` (rewordings) and `hints` (solution steps) columns with a chat "
        "model and write the dataset as Parquet shards.",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", required=True, help="Hub id, local path, or a save_to_disk directory")
    data.add_argument("--config", default=None, help="dataset configuration name")
    data.add_argument("--split", default="train", help="split to read (default: train)")
    data.add_argument("--data-files", nargs="+", default=None, help="data_files passed to load_dataset")
    data.add_argument("--cache-dir", default=None, help="datasets cache directory")
    data.add_argument("--question-column", default=None, help="column with the question text (default: use `prompt`)")
    data.add_argument("--answer-column", default="answer", help="column with the final answer (default: answer)")
    data.add_argument("--no-answer", action="store_true", help="ask for hints without giving the model the answer")
    data.add_argument("--id-column", default="id", help="problem id column, added from the row index if missing")
    data.add_argument("--limit", type=int, default=None, help="process only the first N rows")
    data.add_argument("--out", required=True, help="output directory for the Parquet shards")
    data.add_argument("--out-split", default=None, help="split name of the output files (default: from --split)")
    data.add_argument("--max-shard-size", default="500MB", help="Parquet shard size limit (default: 500MB)")

    gen = parser.add_argument_group("generation")
    gen.add_argument(
        "--num-rewordings",
        type=int,
        default=None,
        help=f"rewordings per problem (default: 3; {AUTHORS_NUM_REWORDINGS} with --hint-mode authors)",
    )
    gen.add_argument(
        "--hint-mode",
        choices=HINT_MODES,
        default="withhold",
        help="withhold (default): steps that stop before the answer; authors: the DIVA authors' pipeline, full "
        "solutions ending in \\boxed{} kept only when the boxed answer matches the gold answer",
    )
    gen.add_argument("--min-hints", type=int, default=DEFAULT_MIN_HINTS, help="fewest steps asked for (default: 3)")
    gen.add_argument("--max-hints", type=int, default=DEFAULT_MAX_HINTS, help="most steps kept (default: 5)")
    gen.add_argument("--overwrite", action="store_true", help="regenerate existing non-empty variants/hints")
    gen.add_argument("--batch-size", type=int, default=32, help="rows per backend call (default: 32)")
    gen.add_argument("--max-new-tokens", type=int, default=1024, help="reply length limit (default: 1024)")
    gen.add_argument("--temperature", type=float, default=0.7, help="sampling temperature, 0 = greedy (default 0.7)")
    gen.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default: 0.95)")
    gen.add_argument("--seed", type=int, default=0, help="torch seed of the local backend (default: 0)")

    backend = parser.add_argument_group("backend (exactly one of --model, --base-url, --backend)")
    backend.add_argument("--model", default=None, help="local chat model (Hub id or path): TransformersChatBackend")
    backend.add_argument("--device", default=None, help="device of --model (default: cuda if available, else cpu)")
    backend.add_argument("--dtype", default="auto", help="dtype of --model (default: auto)")
    backend.add_argument("--generation-batch-size", type=int, default=16, help="--model: conversations per generate")
    backend.add_argument("--trust-remote-code", action="store_true")
    backend.add_argument("--base-url", default=None, help="OpenAI-compatible server root, e.g. http://localhost:8000")
    backend.add_argument("--server-model", default=None, help="model name on the server (required with --base-url)")
    backend.add_argument("--api-key", default=None, help="server API key (default: $OPENAI_API_KEY if set)")
    backend.add_argument("--timeout", type=float, default=300.0, help="seconds per request (default: 300)")
    backend.add_argument("--max-retries", type=int, default=3, help="retries per request (default: 3)")
    backend.add_argument("--max-concurrency", type=int, default=8, help="parallel requests (default: 8)")
    backend.add_argument(
        "--backend", default=None, help="'package.module:function': a callable conversations -> replies"
    )
    return parser


def _check_backend_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    flags = (("--model", args.model), ("--base-url", args.base_url), ("--backend", args.backend))
    chosen = [flag for flag, value in flags if value]
    if len(chosen) != 1:
        parser.error(f"give exactly one of --model, --base-url, --backend (got {', '.join(chosen) or 'none'})")
    if args.base_url and not args.server_model:
        parser.error("--base-url needs --server-model (the model name the server serves)")


def _make_backend(args: argparse.Namespace) -> Any:
    if args.backend:
        return _resolve_callable(args.backend)
    if args.base_url:
        return OpenAICompatibleBackend(
            args.base_url,
            args.server_model,
            api_key=args.api_key or os.environ.get("OPENAI_API_KEY") or None,
            timeout=args.timeout,
            max_retries=args.max_retries,
            temperature=args.temperature,
            top_p=args.top_p,
            max_tokens=args.max_new_tokens,
            max_concurrency=args.max_concurrency,
        )
    return TransformersChatBackend(
        args.model,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        batch_size=args.generation_batch_size,
        device=args.device,
        top_p=args.top_p,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        seed=args.seed,
    )


def main(argv: Sequence[str] | None = None, backend: Any = None) -> int:
    """Command-line entry point (see the module docstring). ``backend`` replaces ``--model`` / ``--base-url``.

    Returns 0; the summary is printed to stdout (one ``key: value`` line each, then a JSON line).
    """
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.limit is not None and args.limit < 0:
        parser.error(f"--limit must be >= 0, got {args.limit}")
    split_match = re.match(r"\w+", args.split)  # "train[:1000]" -> "train"
    out_split = args.out_split or (split_match.group(0) if split_match else None)
    if not out_split or not re.fullmatch(r"\w+", out_split):
        parser.error(f"cannot use {out_split!r} as the output split name; pass --out-split NAME (letters, digits, _)")
    if backend is None:
        _check_backend_args(args, parser)

    dataset = load_source_dataset(
        args.dataset, config=args.config, split=args.split, data_files=args.data_files, cache_dir=args.cache_dir
    )
    if args.limit is not None:
        dataset = dataset.select(range(min(args.limit, len(dataset))))
    if backend is None:  # after loading the data, so that a data error does not wait for a model to load
        backend = _make_backend(args)
    logger.info("loaded %d row(s) from %s (split %s); backend %s", len(dataset), args.dataset, args.split, backend)
    result = add_variant_columns(
        dataset,
        backend,
        num_rewordings=args.num_rewordings
        if args.num_rewordings is not None
        else (AUTHORS_NUM_REWORDINGS if args.hint_mode == "authors" else 3),
        question_column=args.question_column,
        answer_column=None if args.no_answer else args.answer_column,
        id_column=args.id_column,
        overwrite=args.overwrite,
        batch_size=args.batch_size,
        min_hints=args.min_hints,
        max_hints=args.max_hints,
        hint_mode=args.hint_mode,
    )
    paths = write_parquet(result, args.out, out_split, max_shard_size=args.max_shard_size)
    summary = summarize(result)
    print(f"wrote {len(paths)} Parquet shard(s) to {args.out} (split {out_split!r})")
    print(f"rows: {summary['rows']}")
    print(f"mean rewordings per row: {summary['mean_rewordings_per_row']:.2f}")
    print(f"mean hints per row: {summary['mean_hints_per_row']:.2f}")
    print(f"rows without rewordings: {summary['rows_without_rewordings']}")
    print(f"rows without hints: {summary['rows_without_hints']}")
    print(f"rows without either: {summary['rows_without_either']}")
    print("summary: " + json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
