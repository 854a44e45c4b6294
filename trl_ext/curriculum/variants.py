"""DIVA-GRPO's built-in variant generator.

Each problem of difficulty d (1 easy .. 9 hard) is trained with V *variants* aimed at a target difficulty. For every
variant slot an offset delta = target - d is drawn (:func:`target_offsets`), delta picks a list of candidate
transforms (:func:`transform_candidates`), one applicable candidate is drawn uniformly, and the variant is recorded
with difficulty d + increment, where the increment is the table's, not always delta:

* delta <= -1 (a hard problem): a partial-solution **hint** with :func:`hint_step_count` steps;
* delta >= 0: a **rewording** from the ``variants`` column, an unchanged **copy**, or an image perturbation:
  **Gaussian** pixel noise, **rotation** (the prompt states the angle), both, or the **question rendered into the
  image**.

Every random number comes from the ``random.Random`` handed to the generator, which the trainer seeds with
:func:`variant_rng` (a SHA-256 of seed, generation round and problem id), so every process builds the same variant
for the same (seed, round, id, slot) without communicating.

The generator is pluggable: ``diva_variant_generator`` may name any callable with the interface of
:meth:`BuiltinVariantGenerator.__call__`; :func:`resolve_variant_generator` resolves the config value and
:func:`check_generated_variants` validates what a generator returns.

This module imports neither TRL nor transformers; the image transforms live in
:mod:`trl_ext.curriculum.image_variants`, which imports Pillow and numpy only when a transform runs.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import math
import numbers
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trl_ext.curriculum.image_variants import _to_pil, add_gaussian_noise, render_question_in_image, rotate_image

__all__ = [
    "DEFAULT_HINT_TEMPLATE",
    "ALL_HINT_STEPS",
    "IMAGE_TRANSFORMS",
    "TARGET_MEANS",
    "TRANSFORM_NAMES",
    "V1_OFFSETS",
    "BuiltinVariantGenerator",
    "TransformCandidate",
    "VariantGenerator",
    "VariantRecord",
    "check_generated_variants",
    "hint_step_count",
    "question_text",
    "replace_question",
    "resolve_variant_generator",
    "target_offsets",
    "transform_candidates",
    "variant_rng",
]

VariantGenerator = Callable[[dict, int, int, random.Random], list[tuple[dict, int]]]
"""``(row, difficulty, num_variants, rng) -> [(variant_row, recorded_difficulty), ...]``."""

V1_OFFSETS: dict[int, int] = {1: 8, 2: 6, 3: 4, 4: 2, 5: 1, 6: -1, 7: -2, 8: -3, 9: -5}
"""V = 1: delta = target - d for each difficulty d (targets 9, 8, 7, 6, 6, 5, 5, 5, 4)."""

TARGET_MEANS: dict[int, float] = {1: 8.0, 2: 7.5, 3: 7.0, 4: 6.5, 5: 6.0, 6: 5.5, 7: 4.5, 8: 3.5, 9: 3.0}
"""V >= 2: the mean mu(d) of the target draw t ~ round(N(mu(d), 1))."""

ALL_HINT_STEPS = None
"""Returned by :func:`hint_step_count` (and stored in a hint candidate) when every hint step is shown."""

#: Default hinted prompt of the built-in generator (``DIVAConfig.diva_hint_template``).
DEFAULT_HINT_TEMPLATE: str = (
    "{question}\n\nHint: the first steps of a solution are\n{hints}\n\nSolve the problem from scratch."
)

TRANSFORM_NAMES = ("copy", "hint", "rewording", "gaussian", "rotation", "rotation_gaussian", "question_in_image")
"""Every transform name a :class:`VariantRecord` can carry."""

IMAGE_TRANSFORMS = frozenset({"gaussian", "rotation", "rotation_gaussian", "question_in_image"})
"""Transforms that need an image."""

# Rotations for delta <= +3 are the reference's "non-zero multiple of 30 degrees".
_MULTIPLES_OF_30 = tuple(range(30, 360, 30))

_GENERATOR_ACCEPTED = (
    "None (the built-in generator), a callable (row, difficulty, num_variants, rng) -> "
    "[(variant_row, recorded_difficulty), ...], or a 'package.module:function' string"
)
_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


# --------------------------------------------------------------------------------------------------------------------
# Seeding and the difficulty tables
# --------------------------------------------------------------------------------------------------------------------


def variant_rng(seed: int, round_index: int, problem_id: Any) -> random.Random:
    """The generator stream for one problem in one generation round.

    Seeded by SHA-256 of ``[seed, round_index, str(problem_id)]`` (JSON-encoded, so the fields cannot run into each
    other), never by Python's per-process salted ``hash()``: every process, and every call, gets the same stream.

    Args:
        seed: the training seed (``GRPOConfig.seed``).
        round_index: the generation-round counter (0-based).
        problem_id: the row's ``id``; ints and strings are both keyed by ``str(problem_id)``, as in the store.

    Returns:
        A fresh ``random.Random``.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"variant_rng: `seed` must be an int, got {seed!r}")
    if isinstance(round_index, bool) or not isinstance(round_index, numbers.Integral):
        raise ValueError(f"variant_rng: `round_index` must be an int, got {round_index!r}")
    key = json.dumps([int(seed), int(round_index), str(problem_id)]).encode("utf-8")
    return random.Random(int.from_bytes(hashlib.sha256(key).digest(), "big"))


def _as_int(value: Any, name: str) -> int:
    """``value`` as an int if it is integral (int, numpy integer, or a float such as 3.0); ``ValueError`` otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"`{name}` must be an integer, got {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and math.isfinite(float(value)) and float(value).is_integer():
        return int(value)
    raise ValueError(f"`{name}` must be an integer, got {value!r}")


def target_offsets(
    difficulty: int,
    num_variants: int,
    rng: random.Random,
    *,
    min_difficulty: int = 1,
    max_difficulty: int = 9,
) -> list[int]:
    """The offsets delta = target - d of the ``num_variants`` variant slots of a problem of difficulty d.

    * V = 1: the deterministic table :data:`V1_OFFSETS`; nothing is drawn from ``rng``.
    * V >= 2: per slot, t = round(N(mu(d), 1)) clipped to [min_difficulty, max_difficulty] with mu =
      :data:`TARGET_MEANS`, and delta = t - d. Only the **first** negative delta is kept (one hint variant per
      problem at most); every later negative draw is replaced by a uniform draw from {0, 1, 2, 3}, which is not
      clipped (the trainer clips the recorded difficulty).

    The tables are defined on the 1..9 scale; with a wider configured range, d is looked up clipped to [1, 9] (and
    for V = 1 the target is clipped to the configured range).

    Args:
        difficulty: the problem's level d, in [min_difficulty, max_difficulty].
        num_variants: V >= 0; 0 gives ``[]``.
        rng: the only source of randomness.
        min_difficulty, max_difficulty: the level range (default 1 and 9).

    Returns:
        ``num_variants`` integer offsets.
    """
    d = _as_int(difficulty, "difficulty")
    num_variants = _as_int(num_variants, "num_variants")
    lo, hi = _as_int(min_difficulty, "min_difficulty"), _as_int(max_difficulty, "max_difficulty")
    if lo > hi:
        raise ValueError(f"`min_difficulty` ({lo}) must be <= `max_difficulty` ({hi})")
    if not lo <= d <= hi:
        raise ValueError(f"`difficulty` must be in [{lo}, {hi}], got {d}")
    if num_variants < 0:
        raise ValueError(f"`num_variants` must be >= 0, got {num_variants}")
    table_d = min(max(d, 1), 9)
    if num_variants == 0:
        return []
    if num_variants == 1:
        return [min(max(d + V1_OFFSETS[table_d], lo), hi) - d]
    offsets: list[int] = []
    seen_negative = False
    for _ in range(num_variants):
        target = min(max(round(rng.gauss(TARGET_MEANS[table_d], 1.0)), lo), hi)
        delta = target - d
        if delta < 0:
            if seen_negative:
                delta = rng.randint(0, 3)
            seen_negative = True
        offsets.append(delta)
    return offsets


def hint_step_count(delta: int) -> int | None:
    """How many hint steps a variant with offset ``delta`` shows.

    Returns :data:`ALL_HINT_STEPS` (``None``, meaning every step) if delta <= -7, 3 if delta <= -5, 2 if
    delta <= -3, else 1. Hints are only built for delta <= -1.
    """
    delta = _as_int(delta, "delta")
    if delta <= -7:
        return ALL_HINT_STEPS
    if delta <= -5:
        return 3
    if delta <= -3:
        return 2
    return 1


@dataclass(frozen=True)
class TransformCandidate:
    """One entry of the delta -> transform table.

    Attributes:
        name: one of :data:`TRANSFORM_NAMES`.
        increment: the recorded difficulty increment (the variant's difficulty is d + increment).
        sigma: the Gaussian noise std on pixels scaled to [0, 1] (``gaussian`` and ``rotation_gaussian``).
        angle: ``"multiple_of_30"`` (a non-zero multiple of 30 degrees) or ``"any"`` (an integer in 1..359) for the
            rotations; ``None`` otherwise.
        hint_steps: for ``hint``, the number of steps shown (``None`` = all, see :func:`hint_step_count`).
    """

    name: str
    increment: int
    sigma: float | None = None
    angle: str | None = None
    hint_steps: int | None = None


def transform_candidates(delta: int) -> list[TransformCandidate]:
    """The candidate list for an offset ``delta`` (the delta -> transform table).

    An entry listed twice appears twice, so a uniform draw picks it twice as often. Offsets above +8 (only
    possible with a level range wider than 1..9) extend the +5..+8 row: sigma = 0.30 + 0.05 (delta - 4).

    Returns:
        A new list of :class:`TransformCandidate`, before any applicability filtering.
    """
    delta = _as_int(delta, "delta")
    C = TransformCandidate
    if delta <= -1:
        return [C("hint", delta, hint_steps=hint_step_count(delta))]
    if delta == 0:
        return [C("rewording", 0)]
    if delta == 1:
        return [
            C("copy", 0),
            C("copy", 0),
            C("rewording", 0),
            C("rewording", 0),
            C("gaussian", 1, sigma=0.30),
            C("rotation", 1, angle="multiple_of_30"),
        ]
    if delta == 2:
        return [
            C("gaussian", 2, sigma=0.35),
            C("rotation", 2, angle="multiple_of_30"),
            C("rewording", 0),
            C("rewording", 0),
            C("question_in_image", 2),
        ]
    if delta == 3:
        return [
            C("gaussian", 3, sigma=0.40),
            C("rotation", 3, angle="multiple_of_30"),
            C("rewording", 0),
            C("question_in_image", 3),
        ]
    if delta == 4:
        return [
            C("gaussian", 3, sigma=0.45),
            C("rotation", 3, angle="any"),
            C("rotation_gaussian", 4, sigma=0.30, angle="any"),
            C("rotation_gaussian", 4, sigma=0.30, angle="any"),
            C("question_in_image", 2),
        ]
    # round() keeps sigma a clean decimal (0.35, not 0.35000000000000003) for logs and tests.
    return [
        C("rotation_gaussian", 4, sigma=0.30, angle="any"),
        C("rotation_gaussian", delta, sigma=round(0.30 + 0.05 * (delta - 4), 10), angle="any"),
        C("question_in_image", 2),
    ]


# --------------------------------------------------------------------------------------------------------------------
# Prompt text
# --------------------------------------------------------------------------------------------------------------------


def _last_user_index(prompt: list) -> int:
    for i in range(len(prompt) - 1, -1, -1):
        message = prompt[i]
        if isinstance(message, Mapping) and message.get("role") == "user":
            return i
    raise ValueError("`prompt`: a conversational prompt must contain a message with role 'user'")


def _check_prompt(prompt: Any) -> None:
    if isinstance(prompt, str):
        return
    if isinstance(prompt, list) and all(isinstance(m, Mapping) for m in prompt):
        return
    raise ValueError(
        "`prompt` must be a string (standard) or a list of {'role', 'content'} messages (conversational), "
        f"got {type(prompt).__name__}"
    )


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", "")) for part in content if isinstance(part, Mapping) and part.get("type") == "text"
        )
    raise ValueError(f"`prompt`: message content must be a string or a list of typed parts, got {type(content)}")


def question_text(prompt: str | list[dict]) -> str:
    """The question text of a TRL prompt.

    A standard prompt is the question itself. For a conversational prompt it is the text of the **last** user
    message: its string content, or its ``{"type": "text"}`` parts joined with newlines (image parts ignored).
    """
    _check_prompt(prompt)
    if isinstance(prompt, str):
        return prompt
    return _content_text(prompt[_last_user_index(prompt)].get("content"))


def replace_question(prompt: str | list[dict], new_text: str) -> str | list[dict]:
    """A new prompt whose question text (see :func:`question_text`) is ``new_text``; the input is not modified.

    For a conversational prompt the message list is deep-copied and only the last user message changes: string
    content is replaced; in a list of parts the first text part gets ``new_text``, the other text parts are dropped
    (their text was part of the question) and every non-text part (images) stays in place. A part list without text
    gets a text part appended.
    """
    _check_prompt(prompt)
    if isinstance(prompt, str):
        return new_text
    new_prompt = copy.deepcopy(prompt)
    index = _last_user_index(new_prompt)
    message = dict(new_prompt[index])
    content = message.get("content")
    if content is None or isinstance(content, str):
        message["content"] = new_text
    elif isinstance(content, list):
        parts: list = []
        placed = False
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text":
                if not placed:
                    parts.append({**part, "text": new_text})
                    placed = True
                continue
            parts.append(part)
        if not placed:
            parts.append({"type": "text", "text": new_text})
        message["content"] = parts
    else:
        raise ValueError(f"`prompt`: message content must be a string or a list of typed parts, got {type(content)}")
    new_prompt[index] = message
    return new_prompt


# --------------------------------------------------------------------------------------------------------------------
# The built-in generator
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class VariantRecord:
    """One built variant, with how it was made.

    Attributes:
        row: the variant row (a shallow copy of the input row with a new ``prompt`` and image column).
        difficulty: the recorded difficulty d + increment, **not** clipped (the trainer clips it).
        transform: the transform applied, one of :data:`TRANSFORM_NAMES` (``"copy"`` when nothing applied).
        increment: the recorded increment.
        delta: the drawn offset delta = target - d that chose the candidate list.
        params: what the transform drew: ``sigma``, ``angle`` (degrees), ``hint_steps`` (steps shown),
            ``reworded`` (bool, whether a rewording replaced the question).
    """

    row: dict
    difficulty: int
    transform: str
    increment: int
    delta: int
    params: dict[str, Any] = field(default_factory=dict)


def _string_list(row: Mapping, column: str) -> list[str]:
    """The non-empty strings of a list column; a missing or ``None`` column is empty."""
    value = row.get(column)
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"column `{column}` must be a list of strings (or missing/None), got {type(value).__name__}")
    return [item for item in value if isinstance(item, str) and item.strip()]


def _first_image(row: Mapping) -> tuple[str | None, Any]:
    """(the column holding the image to transform, that image); TRL's precedence: ``images`` before ``image``."""
    images = row.get("images")
    if images is not None:
        if isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
            if len(images) > 0 and images[0] is not None:
                return "images", images[0]
            return None, None
        raise ValueError(f"column `images` must be a list of images (or missing/None), got {type(images).__name__}")
    image = row.get("image")
    if image is not None:
        return "image", image
    return None, None


class BuiltinVariantGenerator:
    """The built-in DIVA variant generator with the interface of ``diva_variant_generator``.

    Dataset columns read: ``prompt`` (standard or conversational), ``variants`` (list[str] rewordings),
    ``hints`` (list[str] solution steps), ``image`` or ``images`` (only the first image is transformed, the rest are
    kept) and ``text_in_image`` (bool; only rotation is allowed among image transforms). Every other column (``id``,
    answers) is passed through unchanged, and the input row is never mutated.

    Applicability: image transforms need an image, a rewording needs a non-empty ``variants``, a hint needs a
    non-empty ``hints``. Inapplicable candidates are dropped before the uniform draw; if none remains the variant is
    an unchanged ``"copy"`` with increment 0. Image variants also swap in a random rewording with probability 0.5
    when rewordings exist.

    Args:
        hint_template: ``str.format`` template of a hinted question with fields ``{question}`` and ``{hints}``.
        hint_separator: joins the hint steps into ``{hints}`` (default a newline).
        rotation_template: appended verbatim to the question of a rotated variant; field ``{angle}`` (integer
            degrees, counter-clockwise).
        question_in_image_text: the question text of a question-in-image variant, whose question is rendered into
            the image.
        min_difficulty, max_difficulty: the level range used by :func:`target_offsets` (default 1 and 9).
    """

    def __init__(
        self,
        *,
        hint_template: str = DEFAULT_HINT_TEMPLATE,
        hint_separator: str = "\n",
        rotation_template: str = "\n\nNote: the image has been rotated {angle} degrees counter-clockwise.",
        question_in_image_text: str = "The question is shown in the image. Read it carefully and solve it.",
        min_difficulty: int = 1,
        max_difficulty: int = 9,
    ) -> None:
        self.hint_template = _check_template(hint_template, "hint_template", ("question", "hints"))
        if not isinstance(hint_separator, str):
            raise ValueError(f"`hint_separator` must be a string, got {type(hint_separator).__name__}")
        self.hint_separator = hint_separator
        self.rotation_template = _check_template(rotation_template, "rotation_template", ("angle",))
        if not isinstance(question_in_image_text, str) or not question_in_image_text.strip():
            raise ValueError("`question_in_image_text` must be a non-empty string")
        self.question_in_image_text = question_in_image_text
        self.min_difficulty = _as_int(min_difficulty, "min_difficulty")
        self.max_difficulty = _as_int(max_difficulty, "max_difficulty")
        if self.min_difficulty > self.max_difficulty:
            raise ValueError(
                f"`min_difficulty` ({self.min_difficulty}) must be <= `max_difficulty` ({self.max_difficulty})"
            )

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}(min_difficulty={self.min_difficulty}, max_difficulty={self.max_difficulty})"

    def __call__(self, row: dict, difficulty: int, num_variants: int, rng: random.Random) -> list[tuple[dict, int]]:
        """Build ``num_variants`` variants of ``row``: ``[(variant_row, d + increment), ...]`` (unclipped)."""
        return [(record.row, record.difficulty) for record in self.build(row, difficulty, num_variants, rng)]

    def build(self, row: Mapping, difficulty: int, num_variants: int, rng: random.Random) -> list[VariantRecord]:
        """Like :meth:`__call__`, returning :class:`VariantRecord` s that say which transform made each variant.

        Draw order (all from ``rng``): the offsets of every slot (:func:`target_offsets`), then slot by slot what
        :meth:`build_variant` draws.
        """
        _check_row(row)
        d = _as_int(difficulty, "difficulty")
        deltas = target_offsets(
            d, num_variants, rng, min_difficulty=self.min_difficulty, max_difficulty=self.max_difficulty
        )
        return [self.build_variant(row, d, delta, rng) for delta in deltas]

    def applicable_candidates(self, row: Mapping, delta: int) -> list[TransformCandidate]:
        """The entries of ``transform_candidates(delta)`` that ``row`` supports (duplicates kept); may be empty."""
        _check_row(row)
        rewordings = _string_list(row, "variants")
        hints = _string_list(row, "hints")
        has_image = _first_image(row)[1] is not None
        text_in_image = bool(row.get("text_in_image") or False)

        def applicable(candidate: TransformCandidate) -> bool:
            if candidate.name == "hint":
                return bool(hints)
            if candidate.name == "rewording":
                return bool(rewordings)
            if candidate.name in IMAGE_TRANSFORMS:
                # Noise or a second rendering would garble text that is already part of the image.
                return has_image and (candidate.name == "rotation" or not text_in_image)
            return True

        return [c for c in transform_candidates(delta) if applicable(c)]

    def build_variant(self, row: Mapping, difficulty: int, delta: int, rng: random.Random) -> VariantRecord:
        """One variant of ``row`` for a given offset ``delta`` (one slot of :meth:`build`).

        Draws uniformly among :meth:`applicable_candidates` (an unchanged ``"copy"`` with increment 0 when there is
        none), then, as the transform needs: the rewording coin and choice, the angle, and a 64-bit seed for the
        numpy noise generator.
        """
        d = _as_int(difficulty, "difficulty")
        delta = _as_int(delta, "delta")
        options = self.applicable_candidates(row, delta)
        chosen = options[rng.randrange(len(options))] if options else TransformCandidate("copy", 0)
        image_column, image = _first_image(row)
        return self._apply(
            row, d, delta, chosen, rng, _string_list(row, "variants"), _string_list(row, "hints"), image_column, image
        )

    def _apply(
        self,
        row: Mapping,
        difficulty: int,
        delta: int,
        candidate: TransformCandidate,
        rng: random.Random,
        rewordings: list[str],
        hints: list[str],
        image_column: str | None,
        image: Any,
    ) -> VariantRecord:
        import numpy as np

        prompt = row["prompt"]
        question = question_text(prompt)
        new_image = None
        params: dict[str, Any] = {"reworded": False}
        name = candidate.name

        if name == "rewording":
            question = rewordings[rng.randrange(len(rewordings))]
            params["reworded"] = True
        elif name == "hint":
            shown = hints if candidate.hint_steps is ALL_HINT_STEPS else hints[: candidate.hint_steps]
            params["hint_steps"] = len(shown)
            question = self.hint_template.format(question=question, hints=self.hint_separator.join(shown))
        elif name in IMAGE_TRANSFORMS:
            if rewordings and rng.random() < 0.5:
                question = rewordings[rng.randrange(len(rewordings))]
                params["reworded"] = True
            new_image = _to_pil(image)
            if name in ("rotation", "rotation_gaussian"):
                if candidate.angle == "multiple_of_30":
                    angle = _MULTIPLES_OF_30[rng.randrange(len(_MULTIPLES_OF_30))]
                else:
                    angle = rng.randint(1, 359)
                params["angle"] = angle
                # Rotate first so that the noise also covers the fill: a clean border would reveal the rotation.
                new_image = rotate_image(new_image, angle)
                question = question + self.rotation_template.format(angle=angle)
            if name in ("gaussian", "rotation_gaussian"):
                params["sigma"] = candidate.sigma
                new_image = add_gaussian_noise(new_image, candidate.sigma, np.random.default_rng(rng.getrandbits(64)))
            if name == "question_in_image":
                new_image = render_question_in_image(new_image, question)
                question = self.question_in_image_text

        variant = dict(row)
        # A fresh prompt even for a copy: downstream code may edit message lists in place.
        variant["prompt"] = replace_question(prompt, question) if question != question_text(prompt) else _copy(prompt)
        if new_image is not None:
            if image_column == "images":
                variant["images"] = [new_image, *list(row["images"])[1:]]
            else:
                variant["image"] = new_image
        elif isinstance(row.get("images"), list):
            variant["images"] = list(row["images"])
        return VariantRecord(
            row=variant,
            difficulty=difficulty + candidate.increment,
            transform=name,
            increment=candidate.increment,
            delta=delta,
            params=params,
        )


def _check_row(row: Any) -> None:
    if not isinstance(row, Mapping):
        raise ValueError(f"`row` must be a dict (a dataset row), got {type(row).__name__}")
    if "prompt" not in row:
        raise ValueError("`row` must have a `prompt` column")


def _copy(prompt: Any) -> Any:
    return prompt if isinstance(prompt, str) else copy.deepcopy(prompt)


def _check_template(template: Any, name: str, fields: tuple[str, ...]) -> str:
    if not isinstance(template, str):
        raise ValueError(f"`{name}` must be a string with the fields {{{'}, {'.join(fields)}}}")
    try:
        template.format(**dict.fromkeys(fields, "x"))
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(
            f"`{name}` must be a str.format template using only the fields {{{'}, {'.join(fields)}}}: {error!r}"
        ) from error
    missing = [f for f in fields if "{" + f + "}" not in template]
    if missing:
        raise ValueError(f"`{name}` must contain the field(s) {', '.join('{' + f + '}' for f in missing)}")
    return template


# --------------------------------------------------------------------------------------------------------------------
# Resolving and validating a generator
# --------------------------------------------------------------------------------------------------------------------


def resolve_variant_generator(spec: Any, **builtin_kwargs: Any) -> VariantGenerator:
    """The generator named by the config field ``diva_variant_generator``.

    * ``None``: ``BuiltinVariantGenerator(**builtin_kwargs)``.
    * a callable: itself (``builtin_kwargs`` are ignored).
    * ``"package.module:attribute"``: the imported attribute (dotted attributes such as ``"mod:Class.method"``
      are followed); a class is instantiated with no arguments.

    Raises:
        ValueError: naming ``diva_variant_generator`` and the accepted values, for a malformed string, a module
            that does not import, a missing attribute, or something that is not callable.
    """
    if spec is None:
        return BuiltinVariantGenerator(**builtin_kwargs)
    if isinstance(spec, str):
        path = spec.strip()
        if not _IMPORT_PATH.match(path):
            raise ValueError(
                f"`diva_variant_generator`={spec!r} is not a 'package.module:function' string; accepted: {_GENERATOR_ACCEPTED}"
            )
        module_name, attribute = path.split(":")
        try:
            target: Any = importlib.import_module(module_name)
        except ImportError as error:
            raise ValueError(
                f"`diva_variant_generator`={spec!r}: module {module_name!r} cannot be imported ({error}); "
                f"accepted: {_GENERATOR_ACCEPTED}"
            ) from error
        for part in attribute.split("."):
            if not hasattr(target, part):
                raise ValueError(
                    f"`diva_variant_generator`={spec!r}: {module_name!r} has no attribute {attribute!r}; "
                    f"accepted: {_GENERATOR_ACCEPTED}"
                )
            target = getattr(target, part)
        if isinstance(target, type):
            try:
                target = target()
            except Exception as error:
                raise ValueError(
                    f"`diva_variant_generator`={spec!r}: the class cannot be instantiated without arguments "
                    f"({error!r}); accepted: {_GENERATOR_ACCEPTED}"
                ) from error
        if not callable(target):
            raise ValueError(
                f"`diva_variant_generator`={spec!r} names a {type(target).__name__}, which is not callable; "
                f"accepted: {_GENERATOR_ACCEPTED}"
            )
        return target
    if callable(spec):
        return spec
    raise ValueError(f"`diva_variant_generator` got a {type(spec).__name__}; accepted: {_GENERATOR_ACCEPTED}")


def _generator_name(generator: Any) -> str:
    qualname = getattr(generator, "__qualname__", None)
    if isinstance(qualname, str):
        module = getattr(generator, "__module__", None)
        return f"{module}.{qualname}" if module else qualname
    return repr(generator)


def check_generated_variants(generator: Any, row: Mapping, variants: Any, num_variants: int) -> list[tuple[dict, int]]:
    """Validate a generator's output for ``row``.

    Requires exactly ``num_variants`` entries, each a ``(dict, integer)`` pair, whose row keeps the original ``id``
    (compared as ``str(id)``, as in the difficulty store).

    Returns:
        The entries as a list of ``(variant_row, int(recorded_difficulty))`` (not clipped).

    Raises:
        ValueError: naming the generator, for a wrong count, a malformed entry, or a changed ``id``.
    """
    name = _generator_name(generator)
    if isinstance(variants, (str, bytes, Mapping)) or not isinstance(variants, Sequence):
        raise ValueError(
            f"variant generator {name} must return a list of (variant_row, difficulty) pairs, "
            f"got {type(variants).__name__}"
        )
    if len(variants) != num_variants:
        raise ValueError(
            f"variant generator {name} returned {len(variants)} variants for id {row.get('id')!r}; "
            f"expected exactly {num_variants} (diva_num_variants)"
        )
    original_id = str(row.get("id")) if "id" in row else None
    checked: list[tuple[dict, int]] = []
    for slot, entry in enumerate(variants, start=1):
        if not (isinstance(entry, Sequence) and not isinstance(entry, (str, bytes)) and len(entry) == 2):
            raise ValueError(
                f"variant generator {name}: entry {slot} must be a (variant_row, difficulty) pair, got {entry!r}"
            )
        variant_row, recorded = entry
        if not isinstance(variant_row, dict):
            raise ValueError(
                f"variant generator {name}: entry {slot} must hold a dict row, got {type(variant_row).__name__}"
            )
        try:
            recorded_int = _as_int(recorded, "difficulty")
        except ValueError as error:
            raise ValueError(
                f"variant generator {name}: entry {slot} has a non-integer difficulty {recorded!r}"
            ) from error
        variant_id = str(variant_row.get("id")) if "id" in variant_row else None
        if variant_id != original_id:
            raise ValueError(
                f"variant generator {name}: entry {slot} changed the row id from {row.get('id')!r} to "
                f"{variant_row.get('id')!r}; a variant must keep the id of its problem"
            )
        checked.append((variant_row, recorded_int))
    return checked
