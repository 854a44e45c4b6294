"""The arms of a comparison: ``--arm`` specs, each run's ``trl-ext train`` arguments parsed with the arm's trainer
config (errors name the arm), and the key that says whether a stored run can be reused."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Arm", "build_arms", "parse_arm", "parse_run", "run_argv", "run_key"]

RESULT_VERSION = 1


@dataclass
class Arm:
    """One arm of a comparison: a label, a registered trainer, and config overrides for that arm only."""

    label: str
    trainer: str
    overrides: dict[str, str] = field(default_factory=dict)

    def argv(self) -> list[str]:
        out: list[str] = []
        for key, value in self.overrides.items():
            out += [f"--{key}", value]
        return out


def parse_arm(spec: str) -> Arm:
    """``NAME:field=value[,field=value]`` or ``LABEL=TRAINER:field=value,...`` (a new arm with its own label)."""
    head, sep, rest = spec.partition(":")
    if not sep or not head:
        raise ValueError(f"--arm {spec!r}: expected NAME:field=value[,field=value] or LABEL=TRAINER:field=value")
    label, _, trainer = head.partition("=")
    trainer = trainer or label
    overrides: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--arm {spec!r}: {item!r} is not field=value")
        overrides[key.strip().lstrip("-")] = value.strip()
    return Arm(label=label.strip(), trainer=trainer.strip(), overrides=overrides)


def build_arms(trainers: list[str], arm_specs: list[str]) -> list[Arm]:
    """The arms: one per ``--trainers`` entry, with ``--arm`` overrides applied or added as new labelled arms."""
    from trl_ext.registry import list_trainers

    repeated = sorted({name for name in trainers if trainers.count(name) > 1})
    if repeated:
        # A dict keyed by name would silently keep one arm. A second arm of the same trainer needs its own label.
        raise ValueError(
            f"--trainers: {', '.join(repr(name) for name in repeated)} named more than once; name each trainer once "
            f"(a second arm of one trainer with other settings: --arm LABEL={repeated[0]}:field=value)"
        )
    arms = {name: Arm(label=name, trainer=name) for name in trainers}
    for spec in arm_specs:
        arm = parse_arm(spec)
        if arm.label in arms:
            if arm.trainer != arms[arm.label].trainer:
                raise ValueError(f"--arm {spec!r}: arm {arm.label!r} already runs {arms[arm.label].trainer!r}")
            arms[arm.label].overrides.update(arm.overrides)
        else:
            arms[arm.label] = arm
    if not arms:
        raise ValueError("--trainers: name at least one trainer (see `trl-ext list`)")
    known = set(list_trainers())
    for arm in arms.values():
        if arm.trainer not in known:
            raise ValueError(f"arm {arm.label!r}: unknown trainer {arm.trainer!r}; registered: {sorted(known)}")
        if not arm.label.replace("-", "_").replace(".", "_").isidentifier():
            raise ValueError(f"arm {arm.label!r}: use letters, digits, '_', '-' or '.' in an arm's label")
    return list(arms.values())


def run_argv(arm: Arm, seed: int, config: str | None, max_steps: int | None, run_dir: Path, extra: list[str]):
    """The ``trl-ext train`` arguments of one run: compare's defaults, then the shared extras, then the arm's."""
    argv = ["--config", config] if config else []
    argv += ["--trainer", arm.trainer, "--output_dir", str(run_dir)]
    argv += ["--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true"]
    argv += list(extra)
    if max_steps is not None:
        argv += ["--max_steps", str(max_steps)]
    argv += arm.argv()
    argv += ["--seed", str(seed)]
    return argv


def parse_run(arm: Arm, argv: list[str]):
    """Parse one run's arguments with the arm's trainer config; errors name the arm."""
    from trl_ext.training import make_train_parser

    parser = make_train_parser(arm.trainer)
    try:
        parsed = parser.parse_args_and_config(argv, return_remaining_strings=True)
    except SystemExit as exc:  # argparse reports bad values on stderr and exits
        raise ValueError(f"arm {arm.label!r}: its arguments do not parse ({' '.join(argv)})") from exc
    except (ValueError, TypeError) as exc:  # a config's own validation (e.g. a field out of range)
        raise ValueError(f"arm {arm.label!r}: {exc}") from exc
    *values, remaining = parsed
    if remaining:
        from trl_ext.registry import get_trainer

        fields = [item for item in remaining if item.startswith("--")] or remaining
        raise ValueError(
            f"arm {arm.label!r}: {', '.join(fields)} {'names' if len(fields) == 1 else 'name'} no field of "
            f"{get_trainer(arm.trainer)[1].__name__} (`trl-ext train --trainer {arm.trainer} --help` lists them)"
        )
    script_args, training_args, model_args, dataset_args = values
    return script_args, training_args, model_args, dataset_args


def run_key(arm: Arm, argv: list[str]) -> str:
    """What makes a stored run reusable: the trainer, the run's arguments and the recipe's *contents* (not where
    the output or the recipe file live, so a moved or copied comparison still resumes)."""
    kept, recipe, skip = [], "", False
    for index, item in enumerate(argv):
        if skip:
            skip = False
            continue
        if item in ("--output_dir", "--config"):
            skip = True
            if item == "--config":
                recipe = Path(argv[index + 1]).read_text()
            continue
        kept.append(item)
    blob = json.dumps(
        {"trainer": arm.trainer, "argv": kept, "recipe": recipe, "version": RESULT_VERSION}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
