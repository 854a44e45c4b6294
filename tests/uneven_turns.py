"""Two ``deepsearch`` questions that need different numbers of turns, for the multi-process CalibAdv runs of the
engine lanes (``tests/scripts/engine_train.py``, ``tests/scripts/vllm_train.py``).

The first question is answered at once; the second after two searches. Each answer is the gold one or a wrong one
(the scripted policy samples between them where they diverge), so a group's rewards differ and the loss has a
signal. With one question per process, process 0 needs one turn and process 1 three.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset

from trl_ext.data import get_task


def uneven_turn_questions() -> tuple[Dataset, dict[str, list[list[str]]]]:
    """The two questions as a dataset, and the script of each (prompt -> turns -> alternative texts)."""
    rows, seen = [], set()
    for row in get_task("deepsearch").make_dataset(64, 0):
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            rows.append(row)
        if len(rows) == 2:
            break
    first, second = rows

    def answers(row: dict[str, Any]) -> list[str]:
        return [
            f"<think>c</think>\n<answer> {row['golden_answers'][0]} </answer>",
            "<think>c</think>\n<answer> zz </answer>",
        ]

    scripts = {
        first["prompt"]: [answers(first)],
        second["prompt"]: [
            ["<think>a</think>\n<search> one </search>"],
            ["<think>b</think>\n<search> two </search>"],
            answers(second),
        ],
    }
    return Dataset.from_list(rows), scripts
