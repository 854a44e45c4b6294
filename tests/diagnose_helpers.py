"""Helpers of the diagnosis tests: warm-started tiny models with a known competence, and a diagnostic run of a recipe
given as a dict (``trl-ext diagnose`` end to end, in process).

``copy_warm_start(directory, steps)`` fine-tunes the quickstart's tiny random Qwen2 by supervised steps on the ten
``a+0=a`` problems (the ``copy`` level of ``arithmetic``). Its competence was measured, not assumed (seed 0, Adam lr
1e-2, the exact probability of the right answer then EOS at temperature 1, per problem): after 3 steps 0.09-0.41 on
the copy problems and 0.048 on average on the hardest level (``carry``), after 4 steps 0.41-0.73 and 0.026 (it
learnt to repeat the first digit). So one model gives hard and easy levels on real sampling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

#: The settings every diagnostic run in the tests shares: the quickstart's, smaller (8 prompts x 8 completions).
BASE_RECIPE: dict[str, Any] = {
    "trainer": "grpo",
    "per_device_train_batch_size": 64,
    "num_generations": 8,
    "learning_rate": 1.0e-3,
    "temperature": 1.0,
    "beta": 0.0,
    "use_cpu": True,
    "bf16": False,
    "disable_tqdm": True,
    "seed": 0,
    "task_num_rows": 512,
}


def copy_warm_start(directory: str | Path, steps: int) -> str:
    """The quickstart's tiny model after ``steps`` supervised Adam steps (lr 1e-2) on the ten copy problems."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_ext.data.quickstart import QUICKSTART_SETTINGS
    from trl_ext.tiny_models import build_tiny_checkpoint

    directory = Path(directory)
    out = directory / f"copy-sft-{steps}"
    if (out / "config.json").is_file():
        return str(out)
    checkpoint = build_tiny_checkpoint(str(directory / "random"), **QUICKSTART_SETTINGS["model"])
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    rows = [tokenizer.encode(f"{a}+0={a}", add_special_tokens=False) + [tokenizer.eos_token_id] for a in range(10)]
    ids = torch.tensor(rows)
    labels = ids.clone()
    labels[:, :4] = -100  # learn the answer and the EOS only
    for _ in range(steps):
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def run_diagnosis(tmp_path: Path, name: str, steps: int, **fields: Any) -> dict[str, Any]:
    """``trl-ext diagnose`` on ``BASE_RECIPE`` updated with ``fields`` for ``steps`` steps; returns its payload
    (``{"header", "rows", "summary"}``) with ``"output_dir"``, where the files land (``tmp_path / name``)."""
    from trl_ext.diagnose import diagnose

    recipe = {**BASE_RECIPE, **fields}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    payload = diagnose(str(path), steps=steps, output_dir=tmp_path / name, log=lambda *a: None)
    return {**payload, "output_dir": str(tmp_path / name)}


def measured(payload: dict[str, Any]) -> dict[str, float]:
    """Run means of every measured ``regime/*`` metric."""
    return {key: stats["mean"] for key, stats in payload["summary"]["measured"].items()}


def status(payload: dict[str, Any], method: str) -> str:
    """``inside``, ``outside`` or ``not measurable`` for ``method``'s row."""
    return next(row["status"] for row in payload["rows"] if row["method"] == method)
