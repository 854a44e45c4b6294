"""Reading a recipe's header comment: its commands, its launch and its stated batch geometry (tests/test_recipes.py,
tests/test_plan.py)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (ROOT / "recipes").glob("*/*.yaml") if p.parent.name != "accelerate_configs")
#: The tiny recipes run on CPU in CI (transformers generation); every other recipe is a paper recipe.
TINY = {p for p in RECIPES if p.name.endswith("_tiny.yaml") or p.name == "quickstart.yaml"}
PAPER = [p for p in RECIPES if p not in TINY]

#: The header's geometry line, in the format `trl-ext plan` prints (trl_ext.plan.Geometry.line).
GEOMETRY = re.compile(
    r"geometry: (?P<P>\d+) process(?:es)? x per_device_train_batch_size (?P<B>\d+) x gradient_accumulation_steps "
    r"(?P<G>\d+) = (?P<C>\d+) completions = (?P<Q>[\d/]+) prompts x num_generations (?P<K>\d+) per optimizer step; "
    r"steps_per_generation (?P<S>\d+) x num_iterations (?P<I>\d+) / gradient_accumulation_steps (?P<G2>\d+) = "
    r"(?P<O>[\d/]+) optimizer steps? per generation batch of (?P<GC>\d+) completions = (?P<GQ>[\d/]+) prompts$"
)


def header(path: Path) -> list[str]:
    """The comment lines before the first YAML key, without their ``# ``."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return lines


def commands(path: Path) -> list[list[str]]:
    """Every command of the header (continuation lines joined), as argv lists starting at ``trl-ext`` or
    ``accelerate``; a leading ``CUDA_VISIBLE_DEVICES=...`` is dropped, ``<placeholders>`` become ``placeholder``."""
    logical, current = [], ""
    for line in header(path):
        current += line
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        logical.append(current)
        current = ""
    found = []
    for line in logical:
        if not re.match(r"(\w+=\S+ +)*(accelerate launch|trl-ext) ", line):
            continue  # prose
        words = shlex.split(re.sub(r"<([\w-]+)>", r"\1", line))
        while words and "=" in words[0] and not words[0].startswith("-"):
            words = words[1:]
        if len(words) > 1 and (words[:2] == ["accelerate", "launch"] or words[0] == "trl-ext"):
            found.append(words)
    return found


def option(words: list[str], name: str) -> str | None:
    return words[words.index(name) + 1] if name in words else None


@dataclass
class Launch:
    """The header's first launch command: its accelerate config, its processes and the plan options for it."""

    accelerate_config: str | None
    num_processes: int
    plan_options: list[str]


def launch(path: Path) -> Launch:
    """The first command that trains this recipe: ``trl-ext train`` (one process) or ``accelerate launch``."""
    for words in commands(path):
        if words[:2] == ["trl-ext", "train"]:
            return Launch(None, 1, [])
        if words[:2] == ["accelerate", "launch"]:
            config = option(words, "--config_file")
            count = option(words, "--num_processes")
            if count is None:
                count = yaml.safe_load((ROOT / config).read_text())["num_processes"] if config else 1
            plan = (["--accelerate_config", config] if config else []) + ["--num_processes", str(count)]
            return Launch(config, int(count), plan)
    raise AssertionError(f"{path}: no launch command in the header")


def stated_geometry(path: Path) -> tuple[str, dict[str, Fraction]]:
    """The header's one geometry line and its numbers."""
    lines = [line for line in header(path) if line.startswith("geometry:")]
    assert len(lines) == 1, f"{path.name}: {len(lines)} geometry lines in the header"
    match = GEOMETRY.match(lines[0])
    assert match, f"{path.name}: the geometry line is not in the checked format: {lines[0]}"
    return lines[0], {key: Fraction(value) for key, value in match.groupdict().items()}
