"""DIVA-GRPO's built-in variant generator (spec ``specs/diva_grpo.md`` §2.4, §3.1, §3.3; acceptance 4, 9, 11)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trl_ext.curriculum.image_variants import add_gaussian_noise, render_question_in_image, rotate_image
from trl_ext.curriculum.variants import (
    ALL_HINT_STEPS,
    IMAGE_TRANSFORMS,
    TARGET_MEANS,
    BuiltinVariantGenerator,
    VariantRecord,
    check_generated_variants,
    hint_step_count,
    question_text,
    replace_question,
    resolve_variant_generator,
    target_offsets,
    transform_candidates,
    variant_rng,
)

QUESTION = "What is the area of the shaded triangle?"
REWORDINGS = ["Find the shaded triangle's area.", "Compute the area of the triangle that is shaded."]
HINTS = ["Step A: read the base.", "Step B: read the height.", "Step C: halve the product.", "Step D: simplify."]

# The spec's delta -> transform table (§2.4), written out independently of the implementation: (name, increment)
# with "x2" entries repeated.
EXPECTED_TABLE: dict[int, list[tuple[str, int]]] = {
    0: [("rewording", 0)],
    1: [("copy", 0), ("copy", 0), ("rewording", 0), ("rewording", 0), ("gaussian", 1), ("rotation", 1)],
    2: [("gaussian", 2), ("rotation", 2), ("rewording", 0), ("rewording", 0), ("question_in_image", 2)],
    3: [("gaussian", 3), ("rotation", 3), ("rewording", 0), ("question_in_image", 3)],
    4: [
        ("gaussian", 3),
        ("rotation", 3),
        ("rotation_gaussian", 4),
        ("rotation_gaussian", 4),
        ("question_in_image", 2),
    ],
}
for _delta in range(5, 9):
    EXPECTED_TABLE[_delta] = [("rotation_gaussian", 4), ("rotation_gaussian", _delta), ("question_in_image", 2)]
for _delta in range(-8, 0):
    EXPECTED_TABLE[_delta] = [("hint", _delta)]

# Expected noise levels, keyed by (delta, increment) where the increment tells the two delta >= 5 entries apart.
EXPECTED_SIGMA = {
    (1, 1): 0.30,
    (2, 2): 0.35,
    (3, 3): 0.40,
    (4, 3): 0.45,
    (4, 4): 0.30,
    **{(d, 4): 0.30 for d in range(5, 9)},
    **{(d, d): 0.30 + 0.05 * (d - 4) for d in range(5, 9)},
}


def _image(width: int = 12, height: int = 10, seed: int = 0, mode: str = "RGB") -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB").convert(mode)


def _row(**overrides) -> dict:
    row = {
        "id": "p7",
        "prompt": [
            {"role": "system", "content": "Think step by step."},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
        ],
        "image": _image(),
        "variants": list(REWORDINGS),
        "hints": list(HINTS),
        "answer": "12",
    }
    row.update(overrides)
    return row


def _digest(variant_row: dict) -> str:
    """A hash of a variant row's prompt, image pixels and other columns: equal digests mean identical variants."""
    h = hashlib.sha256(json.dumps(variant_row["prompt"], sort_keys=True, default=repr).encode())
    for column in ("image", "images"):
        images = variant_row.get(column)
        for image in images if isinstance(images, list) else [images]:
            if image is not None:
                h.update(f"{image.mode}{image.size}".encode())
                h.update(image.tobytes())
    h.update(
        repr(sorted((k, repr(v)) for k, v in variant_row.items() if k not in ("prompt", "image", "images"))).encode()
    )
    return h.hexdigest()


def my_generator(row, difficulty, num_variants, rng):
    """A user generator: unchanged copies one level harder."""
    return [(dict(row), difficulty + 1) for _ in range(num_variants)]


# --------------------------------------------------------------------------------------------------------------------
# Target offsets and hint steps
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("difficulty", "delta"), [(1, 8), (2, 6), (3, 4), (4, 2), (5, 1), (6, -1), (7, -2), (8, -3), (9, -5)]
)
def test_single_variant_offset_table(difficulty, delta):
    rng = random.Random(0)
    state = rng.getstate()
    assert target_offsets(difficulty, 1, rng) == [delta]
    assert rng.getstate() == state  # the V = 1 table is deterministic and draws nothing


@pytest.mark.parametrize(
    ("delta", "steps"),
    [(-1, 1), (-2, 1), (-3, 2), (-4, 2), (-5, 3), (-6, 3), (-7, ALL_HINT_STEPS), (-8, ALL_HINT_STEPS)],
)
def test_hint_step_counts(delta, steps):
    assert hint_step_count(delta) == steps
    assert transform_candidates(delta)[0].hint_steps == steps


def test_offsets_for_several_variants_follow_the_target_distribution():
    for difficulty in range(1, 10):
        first_targets = []
        for seed in range(400):
            deltas = target_offsets(difficulty, 3, random.Random(seed))
            assert len(deltas) == 3 and all(isinstance(x, int) for x in deltas)
            assert sum(x < 0 for x in deltas) <= 1
            for x in deltas:
                # a drawn target lies in [1, 9]; a replaced negative lies in {0, 1, 2, 3}
                assert 1 <= difficulty + x <= 9 or x in (0, 1, 2, 3)
            first_targets.append(difficulty + deltas[0])  # slot 1 is never replaced
        # Clipping to [1, 9] pulls the d = 1 mean (mu = 8) down by about 0.08; the tolerance covers it.
        assert abs(np.mean(first_targets) - TARGET_MEANS[difficulty]) < 0.25, difficulty


def test_only_the_first_negative_offset_is_kept():
    # d = 9 (mu = 3): almost every draw is negative, so every later slot must come from {0, 1, 2, 3}.
    later = Counter()
    for seed in range(300):
        deltas = target_offsets(9, 4, random.Random(seed))
        assert deltas[0] < 0
        assert all(x in (0, 1, 2, 3) for x in deltas[1:])
        later.update(deltas[1:])
    assert set(later) == {0, 1, 2, 3}
    assert min(later.values()) > 0.15 * sum(later.values())  # uniform: each about 25 %


def test_first_negative_rule_on_constructed_draws():
    class ScriptedRandom(random.Random):
        def __init__(self, normals):
            super().__init__(0)
            self.normals = list(normals)

        def gauss(self, mu=0.0, sigma=1.0):
            return self.normals.pop(0)

    # d = 5: targets 6, 4, 2, 7, 5 -> deltas +1, -1 (kept), -3 (replaced), +2, 0 (not negative, kept)
    deltas = target_offsets(5, 5, ScriptedRandom([6.2, 3.9, 2.1, 7.4, 5.0]))
    assert deltas[0] == 1 and deltas[1] == -1 and deltas[3] == 2 and deltas[4] == 0
    assert deltas[2] in (0, 1, 2, 3)
    # Targets are clipped to [1, 9] before delta is taken.
    assert target_offsets(2, 2, ScriptedRandom([12.0, -3.0])) == [7, -1]


def test_offsets_reject_bad_input():
    with pytest.raises(ValueError, match="difficulty"):
        target_offsets(10, 2, random.Random(0))
    with pytest.raises(ValueError, match="num_variants"):
        target_offsets(5, -1, random.Random(0))
    assert target_offsets(5, 0, random.Random(0)) == []


# --------------------------------------------------------------------------------------------------------------------
# delta -> transform (acceptance 4)
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("delta", list(range(-8, 9)))
def test_candidate_lists_match_the_table(delta):
    pairs = [(c.name, c.increment) for c in transform_candidates(delta)]
    assert sorted(pairs) == sorted(EXPECTED_TABLE[delta])


@pytest.mark.parametrize("delta", list(range(-8, 9)))
def test_transform_distribution_per_offset(delta):
    """Over many seeds only the listed transforms occur, each occurs, with d + the listed increment."""
    difficulty = 9 if delta < 0 else 1  # keeps d + delta inside 1..9, as the sampler would
    generator = BuiltinVariantGenerator()
    row = _row()
    seen = Counter()
    num_seeds = 240
    for seed in range(num_seeds):
        record = generator.build_variant(row, difficulty, delta, variant_rng(seed, 0, row["id"]))
        key = (record.transform, record.increment)
        seen[key] += 1
        assert record.difficulty == difficulty + record.increment
        assert record.delta == delta
        assert record.row["id"] == "p7" and record.row["answer"] == "12"
        if record.transform in ("gaussian", "rotation_gaussian"):
            assert record.params["sigma"] == pytest.approx(EXPECTED_SIGMA[(delta, record.increment)])
        if record.transform == "rotation" and delta <= 3:
            assert record.params["angle"] % 30 == 0 and 30 <= record.params["angle"] <= 330
        if record.transform in ("rotation", "rotation_gaussian"):
            assert 1 <= record.params["angle"] <= 359
            assert f"rotated {record.params['angle']} degrees" in question_text(record.row["prompt"])
        if record.transform == "hint":
            expected_steps = len(HINTS) if hint_step_count(delta) is None else hint_step_count(delta)
            text = question_text(record.row["prompt"])
            assert record.params["hint_steps"] == expected_steps
            assert all((step in text) == (i < expected_steps) for i, step in enumerate(HINTS))
            assert text.startswith(QUESTION) and "from scratch" in text
    expected = Counter(EXPECTED_TABLE[delta])
    assert set(seen) == set(expected)
    total = sum(expected.values())
    for key, multiplicity in expected.items():
        assert abs(seen[key] / num_seeds - multiplicity / total) < 0.1, (key, seen)


def test_any_angle_rotations_are_not_restricted_to_multiples_of_30():
    generator = BuiltinVariantGenerator()
    angles = set()
    for seed in range(200):
        record = generator.build_variant(_row(), 1, 4, random.Random(seed))
        if record.transform in ("rotation", "rotation_gaussian"):
            angles.add(record.params["angle"])
    assert any(a % 30 for a in angles) and len(angles) > 30


def test_single_variant_call_uses_the_table():
    generator = BuiltinVariantGenerator()
    for seed in range(50):
        ((variant, recorded),) = generator(_row(), 9, 1, random.Random(seed))  # delta = -5: a 3-step hint
        assert recorded == 4
        text = question_text(variant["prompt"])
        assert HINTS[2] in text and HINTS[3] not in text
        ((_, recorded),) = generator(_row(), 5, 1, random.Random(seed))  # delta = +1: increment 0 or 1
        assert recorded in (5, 6)


def test_recorded_difficulty_is_not_clipped():
    # d = 9 with V = 3: later slots get delta in {0..3}; a +2/+3 image variant records 11 or 12 (the trainer clips).
    generator = BuiltinVariantGenerator()
    recorded = {d for seed in range(200) for _, d in generator(_row(), 9, 3, random.Random(seed))}
    assert max(recorded) > 9


def test_image_variants_swap_in_a_rewording_half_of_the_time():
    generator = BuiltinVariantGenerator()
    reworded = 0
    for seed in range(400):
        record = generator.build_variant(_row(), 1, 6, random.Random(seed))
        assert record.transform in IMAGE_TRANSFORMS
        if record.transform == "question_in_image":
            assert question_text(record.row["prompt"]) == generator.question_in_image_text
        else:
            starts = [q for q in [QUESTION, *REWORDINGS] if question_text(record.row["prompt"]).startswith(q)]
            assert starts == ([starts[0]] if starts else [])
            assert (starts[0] in REWORDINGS) == record.params["reworded"]
        reworded += record.params["reworded"]
    assert 0.4 < reworded / 400 < 0.6


# --------------------------------------------------------------------------------------------------------------------
# Applicability
# --------------------------------------------------------------------------------------------------------------------


def test_text_only_rows_never_get_image_transforms():
    generator = BuiltinVariantGenerator()
    row = _row(image=None, prompt=QUESTION)
    for delta in range(1, 9):
        for seed in range(40):
            record = generator.build_variant(row, 1, delta, random.Random(seed))
            assert record.transform not in IMAGE_TRANSFORMS
            assert record.row["image"] is None
            if delta >= 5:  # every candidate needs an image
                assert (record.transform, record.increment, record.difficulty) == ("copy", 0, 1)
                assert record.row["prompt"] == QUESTION


def test_text_in_image_allows_only_rotation():
    generator = BuiltinVariantGenerator()
    row = _row(text_in_image=True)
    seen = Counter()
    for delta in range(1, 9):
        for seed in range(40):
            record = generator.build_variant(row, 1, delta, random.Random(seed))
            seen[record.transform] += 1
            if delta >= 5:
                assert record.transform == "copy" and record.increment == 0
    assert seen["rotation"] > 0
    assert not {"gaussian", "rotation_gaussian", "question_in_image"} & set(seen)


@pytest.mark.parametrize("variants", ["missing", None, [], ["", "   "]])
def test_no_rewordings(variants):
    generator = BuiltinVariantGenerator()
    row = _row()
    if variants == "missing":
        del row["variants"]
    else:
        row["variants"] = variants
    for delta in range(0, 4):
        for seed in range(30):
            record = generator.build_variant(row, 1, delta, random.Random(seed))
            assert record.transform != "rewording" and not record.params["reworded"]
            if delta == 0:
                assert (record.transform, record.increment) == ("copy", 0)
                assert question_text(record.row["prompt"]) == QUESTION


@pytest.mark.parametrize("hints", ["missing", None, []])
def test_no_hints_gives_an_unchanged_copy(hints):
    generator = BuiltinVariantGenerator()
    row = _row()
    if hints == "missing":
        del row["hints"]
    else:
        row["hints"] = hints
    for delta in (-1, -3, -8):
        record = generator.build_variant(row, 9, delta, random.Random(0))
        assert (record.transform, record.increment, record.difficulty) == ("copy", 0, 9)
        assert record.row["prompt"] == row["prompt"] and record.row["image"] is row["image"]


def test_fewer_hints_than_steps_shows_them_all():
    record = BuiltinVariantGenerator().build_variant(_row(hints=["only step"]), 9, -6, random.Random(0))
    assert record.transform == "hint" and record.params["hint_steps"] == 1
    assert "only step" in question_text(record.row["prompt"])


def test_images_column_transforms_only_the_first_image():
    second = _image(seed=5)
    row = _row(images=[_image(), second])
    del row["image"]
    for seed in range(20):
        record = BuiltinVariantGenerator().build_variant(row, 1, 6, random.Random(seed))
        assert record.transform in IMAGE_TRANSFORMS
        assert len(record.row["images"]) == 2 and record.row["images"][1] is second
        assert record.row["images"][0] is not row["images"][0]
        assert record.row["images"] is not row["images"]


def test_bad_columns_are_rejected():
    with pytest.raises(ValueError, match="variants"):
        BuiltinVariantGenerator().build_variant(_row(variants="one rewording"), 5, 0, random.Random(0))
    with pytest.raises(ValueError, match="prompt"):
        BuiltinVariantGenerator()({"id": 1}, 5, 1, random.Random(0))


# --------------------------------------------------------------------------------------------------------------------
# Determinism (acceptance 9)
# --------------------------------------------------------------------------------------------------------------------


def _variant_digests(seed: int, round_index: int) -> list[str]:
    generator = BuiltinVariantGenerator()
    digests = []
    for index in range(12):
        row = _row(id=index)
        for variant, recorded in generator(row, 1 + index % 9, 3, variant_rng(seed, round_index, row["id"])):
            digests.append(f"{_digest(variant)}:{recorded}")
    return digests


def test_same_seed_round_and_id_give_identical_variants():
    first = _variant_digests(seed=42, round_index=3)
    assert first == _variant_digests(seed=42, round_index=3)
    other_round = _variant_digests(seed=42, round_index=4)
    assert sum(a != b for a, b in zip(first, other_round)) > len(first) // 2
    # ids are keyed by str(id), as in the difficulty store
    assert variant_rng(1, 2, 7).random() == variant_rng(1, 2, "7").random()
    assert variant_rng(1, 2, 7).random() != variant_rng(2, 1, 7).random()


def test_variants_are_identical_across_processes():
    script = (
        "import json, sys; sys.path.insert(0, sys.argv[1]);"
        "from test_diva_variants import _variant_digests;"
        "print(json.dumps(_variant_digests(42, 3)))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "1"}
    tests_dir = str(Path(__file__).resolve().parent)
    result = subprocess.run(
        [sys.executable, "-c", script, tests_dir], capture_output=True, text=True, env=env, check=True, timeout=120
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == _variant_digests(42, 3)


# --------------------------------------------------------------------------------------------------------------------
# Image transforms
# --------------------------------------------------------------------------------------------------------------------


def test_gaussian_noise_keeps_size_and_mode_and_has_the_requested_std():
    gray = Image.new("RGB", (64, 48), (128, 128, 128))
    noisy = add_gaussian_noise(gray, 0.1, np.random.default_rng(0))
    assert noisy.size == gray.size and noisy.mode == "RGB"
    diff = (np.asarray(noisy, dtype=float) - 128) / 255
    assert abs(diff.std() - 0.1) < 0.01 and abs(diff.mean()) < 0.01
    assert add_gaussian_noise(gray, 0.0, np.random.default_rng(0)).tobytes() == gray.tobytes()
    # Clipping keeps strong noise inside the pixel range, and more sigma means more change.
    strong = np.asarray(add_gaussian_noise(gray, 0.45, np.random.default_rng(0)), dtype=float)
    assert np.abs(strong - 128).mean() > np.abs(diff * 255).mean()


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P", "1"])
def test_gaussian_noise_keeps_other_modes(mode):
    image = _image(20, 16, mode=mode)
    noisy = add_gaussian_noise(image, 0.3, np.random.default_rng(1))
    assert noisy.mode == mode and noisy.size == image.size
    assert noisy.tobytes() != image.tobytes()
    if mode in ("RGBA", "LA"):  # the alpha channel is not noised
        assert noisy.getchannel("A").tobytes() == image.getchannel("A").tobytes()


def test_gaussian_noise_accepts_numpy_arrays():
    array = np.full((8, 8, 3), 100, dtype=np.uint8)
    noisy = add_gaussian_noise(array, 0.2, np.random.default_rng(0))
    assert isinstance(noisy, Image.Image) and noisy.size == (8, 8)


def test_rotation_by_90_swaps_width_and_height():
    image = _image(30, 20)
    assert rotate_image(image, 90).size == (20, 30)
    assert rotate_image(image, 180).size == (30, 20)
    # expanded canvas: a 45 degree turn of a 30 x 20 image needs about (30 + 20) / sqrt(2) on each side
    assert min(rotate_image(image, 45).size) >= 34


def test_rotation_fills_with_the_mean_edge_colour():
    pixels = np.zeros((20, 30, 3), dtype=np.uint8)
    pixels[:10] = (200, 10, 40)
    pixels[10:] = (20, 100, 240)
    pixels[5:15, 5:25] = (0, 255, 0)  # interior pixels must not count
    image = Image.fromarray(pixels)
    edges = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]).astype(float)
    expected = tuple(int(round(v)) for v in edges.mean(axis=0))
    rotated = rotate_image(image, 45)
    assert rotated.mode == "RGB"
    for corner in [(0, 0), (rotated.width - 1, 0), (0, rotated.height - 1), (rotated.width - 1, rotated.height - 1)]:
        assert rotated.getpixel(corner) == expected
    gray = rotate_image(image.convert("L"), 30)
    assert gray.mode == "L" and isinstance(gray.getpixel((0, 0)), int)


def test_question_in_image_adds_a_text_band():
    image = Image.new("RGB", (300, 80), (10, 120, 200))
    rendered = render_question_in_image(image, "A long question " * 20)
    assert rendered.height > image.height and rendered.width == 300 and rendered.mode == "RGB"
    band = np.asarray(rendered, dtype=float)[: rendered.height - image.height]
    assert band.std() > 0 and band.min() < 100  # dark text on the light band
    pasted = rendered.crop((0, rendered.height - image.height, 300, rendered.height))
    assert pasted.tobytes() == image.tobytes()
    # longer text wraps to more lines, so a taller band
    assert render_question_in_image(image, "A long question " * 40).height > rendered.height
    # a small image is centred on a canvas wide enough for legible text
    small = render_question_in_image(_image(12, 10, mode="L"), "x + 1 = 2")
    assert small.mode == "L" and small.width == 256 and small.height > 10


# --------------------------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------------------------


def test_question_text_and_replace_question():
    assert question_text("plain") == "plain"
    assert replace_question("plain", "new") == "new"
    parts = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}]},
    ]
    snapshot = copy.deepcopy(parts)
    assert question_text(parts) == "a\nb"
    replaced = replace_question(parts, "new")
    assert parts == snapshot  # input untouched
    assert replaced[:2] == parts[:2] and replaced[0] is not parts[0]
    assert replaced[2]["content"] == [{"type": "text", "text": "new"}, {"type": "image"}]
    only_image = [{"role": "user", "content": [{"type": "image"}]}]
    assert replace_question(only_image, "q")[0]["content"] == [{"type": "image"}, {"type": "text", "text": "q"}]
    with pytest.raises(ValueError, match="user"):
        question_text([{"role": "system", "content": "no user"}])
    with pytest.raises(ValueError, match="prompt"):
        question_text(42)


@pytest.mark.parametrize("content_kind", ["str", "parts"])
def test_conversational_variants_change_only_the_last_user_message(content_kind):
    last = QUESTION if content_kind == "str" else [{"type": "image"}, {"type": "text", "text": QUESTION}]
    prompt = [
        {"role": "system", "content": "Think step by step."},
        {"role": "user", "content": "An earlier question."},
        {"role": "assistant", "content": "An earlier answer."},
        {"role": "user", "content": last},
    ]
    row = _row(prompt=prompt)
    snapshot = copy.deepcopy({k: v for k, v in row.items() if k != "image"})
    image_bytes = row["image"].tobytes()
    generator = BuiltinVariantGenerator()
    changed = 0
    for delta in (-3, 0, 2, 6):
        for seed in range(10):
            record = generator.build_variant(row, 5, delta, random.Random(seed))
            new_prompt = record.row["prompt"]
            assert new_prompt[:3] == prompt[:3]
            assert new_prompt is not prompt and new_prompt[3] is not prompt[3]
            if content_kind == "parts":
                kinds = [part["type"] for part in new_prompt[3]["content"]]
                assert kinds == ["image", "text"]
            changed += question_text(new_prompt) != QUESTION
    assert changed > 0
    assert {k: v for k, v in row.items() if k != "image"} == snapshot
    assert row["image"].tobytes() == image_bytes


def test_variant_rows_keep_every_other_column_and_leave_the_input_alone():
    row = _row(extra={"nested": [1, 2]}, difficulty=3)
    snapshot = copy.deepcopy({k: v for k, v in row.items() if k != "image"})
    for variant, _ in BuiltinVariantGenerator()(row, 1, 4, random.Random(3)):
        assert variant is not row
        for key in row:
            if key not in ("prompt", "image"):
                assert variant[key] is row[key]
    assert {k: v for k, v in row.items() if k != "image"} == snapshot


def test_templates_are_configurable_and_checked():
    generator = BuiltinVariantGenerator(
        hint_template="Q: {question} | steps: {hints}", hint_separator=" ; ", rotation_template=" [turned {angle}]"
    )
    record = generator.build_variant(_row(), 9, -3, random.Random(0))
    assert question_text(record.row["prompt"]) == f"Q: {QUESTION} | steps: {HINTS[0]} ; {HINTS[1]}"
    for seed in range(40):
        record = generator.build_variant(_row(variants=None), 1, 1, random.Random(seed))
        if record.transform == "rotation":
            assert question_text(record.row["prompt"]) == f"{QUESTION} [turned {record.params['angle']}]"
            break
    else:
        pytest.fail("no rotation drawn")
    with pytest.raises(ValueError, match="hint_template"):
        BuiltinVariantGenerator(hint_template="{question} only")
    with pytest.raises(ValueError, match="rotation_template"):
        BuiltinVariantGenerator(rotation_template="no angle")
    with pytest.raises(ValueError, match="hint_template"):
        BuiltinVariantGenerator(hint_template="{question} {hints} {unknown}")


# --------------------------------------------------------------------------------------------------------------------
# Pluggable generator (acceptance 11)
# --------------------------------------------------------------------------------------------------------------------


def test_resolve_variant_generator():
    builtin = resolve_variant_generator(None, question_in_image_text="See the image.")
    assert isinstance(builtin, BuiltinVariantGenerator) and builtin.question_in_image_text == "See the image."
    assert resolve_variant_generator(my_generator) is my_generator
    assert resolve_variant_generator("json:dumps") is json.dumps
    assert resolve_variant_generator("os.path:join") is os.path.join
    named_class = resolve_variant_generator("trl_ext.curriculum.variants:BuiltinVariantGenerator")
    assert isinstance(named_class, BuiltinVariantGenerator)
    user = resolve_variant_generator(my_generator)
    out = check_generated_variants(user, _row(), user(_row(), 4, 2, random.Random(0)), 2)
    assert [d for _, d in out] == [5, 5]


@pytest.mark.parametrize(
    "spec",
    [
        "json.dumps",
        "json:",
        ":dumps",
        "a:b:c",
        "json: dumps",
        "no_such_module_xyz:f",
        "json:no_such_attr",
        "json:__name__",
        3,
    ],
)
def test_resolve_variant_generator_errors_name_the_field(spec):
    with pytest.raises(ValueError, match="diva_variant_generator") as info:
        resolve_variant_generator(spec)
    assert "module:function" in str(info.value)


def test_check_generated_variants():
    row = _row()
    good = [(dict(row), np.int64(6)), (dict(row), 7.0)]
    checked = check_generated_variants(my_generator, row, good, 2)
    assert [type(d) for _, d in checked] == [int, int] and [d for _, d in checked] == [6, 7]
    with pytest.raises(ValueError, match="my_generator.*returned 1 variants"):
        check_generated_variants(my_generator, row, good[:1], 2)
    with pytest.raises(ValueError, match="my_generator.*id"):
        check_generated_variants(my_generator, row, [(dict(row), 6), ({**row, "id": "other"}, 6)], 2)
    with pytest.raises(ValueError, match="my_generator.*id"):
        check_generated_variants(my_generator, row, [({k: v for k, v in row.items() if k != "id"}, 6)], 1)
    with pytest.raises(ValueError, match="my_generator.*pair"):
        check_generated_variants(my_generator, row, [dict(row)], 1)
    with pytest.raises(ValueError, match="my_generator.*non-integer"):
        check_generated_variants(my_generator, row, [(dict(row), 6.5)], 1)
    with pytest.raises(ValueError, match="my_generator"):
        check_generated_variants(my_generator, row, None, 1)
    # an int id and its string form are the same problem (the store keys by str(id))
    assert check_generated_variants(my_generator, {"id": 3}, [({"id": "3"}, 1)], 1) == [({"id": "3"}, 1)]
    with pytest.raises(ValueError, match="BuiltinVariantGenerator"):
        check_generated_variants(BuiltinVariantGenerator(), row, [], 1)


def test_builtin_output_always_passes_the_checks():
    generator = BuiltinVariantGenerator()
    rows = [_row(), _row(image=None, prompt=QUESTION), _row(text_in_image=True, hints=None), _row(variants=None)]
    for seed in range(30):
        for num_variants in range(0, 4):
            row = rows[seed % len(rows)]
            difficulty = 1 + seed % 9
            rng = random.Random(seed)
            records = generator.build(row, difficulty, num_variants, random.Random(seed))
            assert all(isinstance(r, VariantRecord) for r in records)
            out = check_generated_variants(generator, row, generator(row, difficulty, num_variants, rng), num_variants)
            assert [d for _, d in out] == [r.difficulty for r in records]
