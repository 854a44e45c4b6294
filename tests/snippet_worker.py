"""Runs the documentation's snippets for ``tests/test_docs.py``, in one process so that torch and TRL load once.

    python tests/snippet_worker.py JOBS.json RESULTS.json      (in an empty working directory, offline)

Each job is one of:

* ``python``: a Python block labelled ``run``, executed in a fresh module with the stand-ins its label asks for
  (``tests/test_docs.py`` says which exist and why). ``file=PATH`` writes the block to ``PATH`` in the working directory
  and imports it from there, so that a later block can import it by name as the page says.
* ``imports``: the ``trl`` / ``trl_ext`` names a block labelled ``parse`` imports, each checked to exist.
* ``cli``: ``trl-ext ARGV`` run for real through the console script's function (cheap commands only: ``--help``,
  ``list``, ``--version``).
* ``train_args``: ``trl-ext train ARGV`` / ``recipes/train.py ARGV`` parsed (trainer config, model config, script
  arguments, the recipe), not run. ``--use_cpu true --bf16 false`` are appended, as in ``tests/test_recipes.py``: GPU
  recipes ask for bf16, which transformers refuses to parse on a machine without a GPU.

Every job records ``ok``, the error (the last lines of its traceback) and its wall time; one failing job does not
stop the others.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import re
import sys
import time
import traceback
import types
from pathlib import Path

#: A hub model id given as ``model="Org/Name"`` (the ``tiny-model`` stand-in replaces it).
HUB_MODEL = re.compile(r"""\bmodel=(["'])[\w.-]+/[\w.-]+\1""")

_TRAIN_CALLS: list[str] = []


def _tiny_checkpoint() -> str:
    from trl_ext.tiny_models import build_tiny_checkpoint

    return build_tiny_checkpoint(str(Path.cwd() / "tiny-model-stand-in"))


def _prompts(conversational: bool):
    from datasets import Dataset

    questions = [f"{a}+{b}=" for a in range(4) for b in range(4)]
    prompts = [[{"role": "user", "content": q}] for q in questions] if conversational else questions
    return Dataset.from_dict({"prompt": prompts, "solution": [str((a + b) % 10) for a in range(4) for b in range(4)]})


def _length_reward(completions, **kwargs):
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [(len(t) % 4) / 3 for t in texts]


#: The names a ``given=`` option may ask for: what a snippet leaves to the reader, made concrete and offline.
STAND_INS = {
    "dataset": lambda: _prompts(conversational=True),
    "my_reward": lambda: _length_reward,
    "paraphrase": lambda: lambda prompt, rng: prompt,
}


def _install_train_patch() -> None:
    """``Trainer.train`` runs one optimizer step (or none, for a ``no-train`` block): enough to show that the trainer
    the snippet built trains, in seconds."""
    from transformers import Trainer

    original = Trainer.train

    def train(self, *args, **kwargs):
        if _TRAIN_CALLS and _TRAIN_CALLS[-1] == "skip":
            _TRAIN_CALLS.append("skipped")
            return None
        self.args.max_steps = 1
        self.args.logging_steps = 1
        result = original(self, *args, **kwargs)
        _TRAIN_CALLS.append("trained")
        return result

    Trainer.train = train


def run_python(job: dict) -> dict:
    options = job["options"]
    source = job["source"]
    if "tiny-model" in options:
        source = HUB_MODEL.sub(lambda m: f"model={_tiny_checkpoint()!r}", source)
    import datasets

    load_dataset = datasets.load_dataset
    if "tiny-dataset" in options:
        datasets.load_dataset = lambda *args, **kwargs: _prompts(conversational=False)
    try:
        return _run_source(job, source, options)
    finally:
        datasets.load_dataset = load_dataset


def _run_source(job: dict, source: str, options: dict) -> dict:
    _TRAIN_CALLS.clear()
    if "no-train" in options:
        _TRAIN_CALLS.append("skip")
    path = options.get("file")
    if path:
        target = Path.cwd() / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source, encoding="utf-8")
        importlib.import_module(path.removesuffix(".py").replace("/", "."))
    else:
        name = f"snippet_{job['id']}"
        module = types.ModuleType(name)
        module.__dict__.update({key: STAND_INS[key]() for key in options.get("given", [])})
        sys.modules[name] = module  # dataclasses look their module up
        exec(compile(source, job["where"], "exec"), module.__dict__)
    return {"train": [call for call in _TRAIN_CALLS if call != "skip"]}


def run_imports(job: dict) -> dict:
    missing = []
    for module_name, names in job["imports"]:
        module = importlib.import_module(module_name)
        missing += [f"{module_name}.{name}" for name in names if not hasattr(module, name)]
    if missing:
        raise ImportError(f"not found: {', '.join(missing)}")
    return {}


def run_cli(job: dict) -> dict:
    from trl_ext.cli import main

    out = io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = main(job["argv"]) or 0
        except SystemExit as exit_:
            code = exit_.code or 0
    if code != 0:
        raise RuntimeError(f"exit status {code}: {out.getvalue()[-2000:]}")
    if not out.getvalue().strip():
        raise RuntimeError("printed nothing")
    return {"output": out.getvalue()[:2000]}


def run_train_args(job: dict) -> dict:
    from trl_ext.training import make_train_parser, peek_trainer_name

    argv = [*job["argv"], "--use_cpu", "true", "--bf16", "false"]
    here = os.getcwd()
    os.chdir(job["cwd"])  # the pages' paths are relative to the repository root
    try:
        trainer = peek_trainer_name(argv)
        _, config, _, _ = make_train_parser(trainer).parse_args_and_config(argv)
    finally:
        os.chdir(here)
    return {"config": type(config).__name__}


RUNNERS = {"python": run_python, "imports": run_imports, "cli": run_cli, "train_args": run_train_args}


def main(jobs_path: str, results_path: str) -> None:
    import torch

    torch.set_num_threads(1)  # tiny models: more threads only add overhead on a shared machine
    sys.path.insert(0, str(Path.cwd()))  # the modules that `file=` blocks write
    _install_train_patch()
    results = {}
    for job in json.loads(Path(jobs_path).read_text(encoding="utf-8")):
        start = time.perf_counter()
        try:
            outcome = {"ok": True, **RUNNERS[job["type"]](job)}
        except BaseException as error:  # a snippet may raise anything, SystemExit included
            lines = traceback.format_exception(type(error), error, error.__traceback__)
            outcome = {"ok": False, "error": "".join(lines)[-3000:]}
        outcome["seconds"] = round(time.perf_counter() - start, 2)
        results[job["id"]] = outcome
        Path(results_path).write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:])
