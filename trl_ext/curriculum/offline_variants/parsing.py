"""Reading the chat model's replies: lists in any common format, rewordings, hints and verified solutions.

Every parser is forgiving: an unreadable reply gives ``[]``, never an exception.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import re
from collections.abc import Mapping
from typing import Any

from trl_ext.curriculum.offline_variants.prompts import DEFAULT_MAX_HINTS

logger = logging.getLogger(__name__)

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
