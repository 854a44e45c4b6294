"""Built-in synthetic tasks: datasets generated in memory and their reward functions.

No task downloads anything. Each task yields a `datasets.Dataset` with a plain-text ``prompt`` column and the columns
its rewards need (they reach the reward functions as keyword lists, TRL's convention), and is registered by name:

```python
from trl_ext.data import get_task

task = get_task("arithmetic")
dataset = task.make_dataset(num_rows=4096, seed=0)
trainer = GRPOTrainer(model=..., reward_funcs=task.reward_funcs, train_dataset=dataset, args=...)
```

The default task, ``arithmetic``, is built so that a tiny *randomly initialised* model learns it by reinforcement
learning alone, on CPU, in about a minute (the settings are in :mod:`trl_ext.data.quickstart`): the answer is one
digit, so a random policy over the task's 15-token vocabulary is already right now and then, and the problems range
from trivial (copy a digit) to hard (last digit of a sum with carry), so that training sees all-correct and all-wrong
groups side by side, the degenerate cases several of our estimators exist to handle.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trl_ext.rewards.text import completion_text

if TYPE_CHECKING:  # `datasets` is imported lazily so that `import trl_ext.data` stays cheap
    from datasets import Dataset

__all__ = [
    "ARITHMETIC_ALPHABET",
    "ARITHMETIC_LEVELS",
    "ARITHMETIC_NUM_PROBLEMS",
    "DEFAULT_TASK",
    "RewardFunc",
    "Task",
    "COUNT_CHAIN_LENGTH",
    "accuracy",
    "count_chain_reward",
    "get_task",
    "list_tasks",
    "make_addition_dataset",
    "make_arithmetic_dataset",
    "make_arithmetic_variants_dataset",
    "make_count_chain_dataset",
    "register_task",
]

#: TRL's reward-function signature: one float (or None for "cannot score") per completion.
RewardFunc = Callable[..., list[float | None]]

#: Number of distinct ``arithmetic`` problems (``a+b=`` over single digits).
ARITHMETIC_NUM_PROBLEMS: int = 100

#: Characters the arithmetic tasks use; pass it to `trl_ext.tiny_models.build_char_tokenizer` for the smallest
#: vocabulary.
ARITHMETIC_ALPHABET: str = "0123456789+="


# ---------------------------------------------------------------------------------------------------------------------
# Task record and registry
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """A built-in synthetic task.

    Attributes:
        name: Registry name, e.g. ``"arithmetic"``.
        description: One line for ``trl-ext list`` and the docs.
        make_dataset: ``make_dataset(num_rows, seed) -> datasets.Dataset`` with at least a plain-text ``prompt``
            column. The same arguments always give the same rows.
        reward_funcs: Reward functions with TRL's signature, to pass as ``GRPOTrainer(reward_funcs=...)``. Every
            reward lies in [0, 1].
        max_completion_length: Suggested ``GRPOConfig.max_completion_length``, in tokens of the character tokenizer.
        alphabet: Every character that prompts and answers use; building the tokenizer over exactly these
            (``build_char_tokenizer(alphabet=task.alphabet)``) keeps the vocabulary, and thus the random policy's
            search space, as small as possible.
        binary_rewards: True if every reward function returns only 0.0 or 1.0 (some estimators assume it).
        default_num_rows: Rows the CLI generates when ``--task_num_rows`` is not given.
    """

    name: str
    description: str
    make_dataset: Callable[[int, int], Dataset]
    reward_funcs: list[RewardFunc]
    max_completion_length: int
    alphabet: str
    binary_rewards: bool = True
    default_num_rows: int = 4096
    metadata: dict[str, Any] = field(default_factory=dict)


_TASKS: dict[str, Task] = {}

#: Name of the task the quickstart, the benchmarks and the CLI use when none is given.
DEFAULT_TASK: str = "arithmetic"


def register_task(task: Task, *, overwrite: bool = False) -> Task:
    """Add `task` to the registry under ``task.name`` and return it.

    Raises:
        ValueError: if the name is taken and `overwrite` is False.
    """
    if not task.name:
        raise ValueError("`task.name` must be a non-empty string.")
    if task.name in _TASKS and not overwrite:
        raise ValueError(f"A task named {task.name!r} is already registered; pass overwrite=True to replace it.")
    _TASKS[task.name] = task
    return task


def list_tasks() -> list[str]:
    """Names of the registered tasks, the default first, then alphabetical."""
    return sorted(_TASKS, key=lambda name: (name != DEFAULT_TASK, name))


def get_task(name: str | None = None) -> Task:
    """The task registered as `name` (default: `DEFAULT_TASK`).

    Raises:
        KeyError: naming the unknown task and listing the known ones.
    """
    name = DEFAULT_TASK if name is None else name
    try:
        return _TASKS[name]
    except KeyError:
        raise KeyError(f"Unknown task {name!r}; known tasks: {', '.join(list_tasks())}.") from None


# ---------------------------------------------------------------------------------------------------------------------
# Rewards
# ---------------------------------------------------------------------------------------------------------------------


def accuracy(
    prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[str | None] | None = None, **kwargs: Any
) -> list[float | None]:
    """Binary exact-match reward: 1.0 if the completion is exactly the ``answer`` column, else 0.0.

    Surrounding whitespace is ignored; special tokens (the trailing ``<eos>``) are already removed by TRL's decoding.
    A row whose answer is missing (None) is unscorable and gets None, which TRL ignores in its reward sum.

    Raises:
        ValueError: if the dataset has no ``answer`` column.
    """
    if answer is None:
        raise ValueError("The `accuracy` reward needs an `answer` column in the dataset.")
    return [
        None if target is None else float(completion_text(completion).strip() == str(target).strip())
        for completion, target in zip(completions, answer, strict=True)
    ]


# ---------------------------------------------------------------------------------------------------------------------
# Arithmetic (the default task)
# ---------------------------------------------------------------------------------------------------------------------

#: Difficulty levels of the ``arithmetic`` task: level -> (description, sampling weight). Every prompt reads ``"a+b="``
#: and the answer is the last digit of ``a + b``.
ARITHMETIC_LEVELS: dict[int, tuple[str, float]] = {
    0: ("copy: b = 0, the answer is a", 0.3),
    1: ("successor: b = 1, the answer is a + 1 (9 + 1 -> 0)", 0.3),
    2: ("sum without carry: b >= 2 and a + b <= 9", 0.2),
    3: ("last digit of a sum with carry: b >= 2 and a + b >= 10", 0.2),
}


def _arithmetic_level(a: int, b: int) -> int:
    if b == 0:
        return 0
    if b == 1:
        return 1
    return 2 if a + b <= 9 else 3


def _arithmetic_problems() -> dict[int, list[tuple[int, int]]]:
    problems: dict[int, list[tuple[int, int]]] = {level: [] for level in ARITHMETIC_LEVELS}
    for a in range(10):
        for b in range(10):
            problems[_arithmetic_level(a, b)].append((a, b))
    return problems


def _check_rows(num_rows: int, seed: int) -> None:
    if not isinstance(num_rows, int) or num_rows < 1:
        raise ValueError(f"`num_rows` must be a positive integer, got {num_rows!r}.")
    if not isinstance(seed, int):
        raise ValueError(f"`seed` must be an integer, got {seed!r}.")


def make_arithmetic_dataset(
    num_rows: int = 4096,
    seed: int = 0,
    *,
    levels: Sequence[int] | None = None,
    weights: Sequence[float] | None = None,
) -> Dataset:
    """Prompts ``"a+b="`` over single digits; the answer is the last digit of ``a + b``.

    Each row draws a difficulty level (with `weights`, default the weights in `ARITHMETIC_LEVELS`), then a problem of
    that level uniformly; the 100 distinct problems repeat across rows.

    Args:
        num_rows: Number of rows. Default 4096.
        seed: Seed of the draw; the same arguments always give the same rows. Default 0.
        levels: Difficulty levels to draw from (keys of `ARITHMETIC_LEVELS`). Default: all.
        weights: Relative sampling weight of each level in `levels`, non-negative, not all zero. Default: the
            weights of `ARITHMETIC_LEVELS`.

    Returns:
        A `datasets.Dataset` with columns ``prompt`` (str), ``answer`` (str, one digit), ``difficulty`` (int level)
        and ``id`` (str, e.g. ``"arithmetic/3+4"``, the same for every row of the same problem).
    """
    from datasets import Dataset

    _check_rows(num_rows, seed)
    levels = list(ARITHMETIC_LEVELS) if levels is None else list(levels)
    unknown = [level for level in levels if level not in ARITHMETIC_LEVELS]
    if not levels or unknown:
        raise ValueError(f"`levels` must be a non-empty subset of {sorted(ARITHMETIC_LEVELS)}, got {levels!r}.")
    weights = [ARITHMETIC_LEVELS[level][1] for level in levels] if weights is None else list(weights)
    if len(weights) != len(levels) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(
            f"`weights` must hold one non-negative weight per level ({len(levels)}), not all zero; got {weights!r}."
        )

    problems = _arithmetic_problems()
    rng = random.Random(seed)
    rows: dict[str, list[Any]] = {"prompt": [], "answer": [], "difficulty": [], "id": []}
    for level in rng.choices(levels, weights=weights, k=num_rows):
        a, b = rng.choice(problems[level])
        rows["prompt"].append(f"{a}+{b}=")
        rows["answer"].append(str((a + b) % 10))
        rows["difficulty"].append(level)
        rows["id"].append(f"arithmetic/{a}+{b}")
    return Dataset.from_dict(rows)


def make_addition_dataset(num_rows: int = 4096, seed: int = 0) -> Dataset:
    """Prompts ``"a+b="`` over single digits; the answer is the full sum (one or two digits).

    A multi-token variant of ``arithmetic`` for token-level methods. ``difficulty`` is 0 for ``b = 0``, 1 for a
    one-digit sum, 2 for a two-digit sum; ``id`` reads ``"addition/a+b"``. Problems are drawn uniformly.
    """
    from datasets import Dataset

    _check_rows(num_rows, seed)
    rng = random.Random(seed)
    rows: dict[str, list[Any]] = {"prompt": [], "answer": [], "difficulty": [], "id": []}
    for _ in range(num_rows):
        a, b = rng.randrange(10), rng.randrange(10)
        rows["prompt"].append(f"{a}+{b}=")
        rows["answer"].append(str(a + b))
        rows["difficulty"].append(0 if b == 0 else (1 if a + b <= 9 else 2))
        rows["id"].append(f"addition/{a}+{b}")
    return Dataset.from_dict(rows)


def make_arithmetic_variants_dataset(num_rows: int = ARITHMETIC_NUM_PROBLEMS, seed: int = 0) -> Dataset:
    """The distinct ``arithmetic`` problems, each once, with rewordings and a hint: the built-in task for DIVA-GRPO.

    DIVA keeps a difficulty level per problem and revisits it once per epoch, so it wants a small set of unique
    problems trained for many epochs rather than many repeated rows. Problems are drawn without replacement (in a
    seeded order) from the 100 ``"a+b="`` problems; about half need a carry, so difficulty is spread.

    Args:
        num_rows: Number of distinct problems, 1..100. Default 100 (all).
        seed: Seed of the draw. Default 0.

    Returns:
        A `datasets.Dataset` with columns ``prompt`` (``"a+b="``), ``answer`` (last digit of a + b), ``id``
        (``"arithmetic/a+b"``, unique), ``level`` (the `ARITHMETIC_LEVELS` key, 0-3; deliberately not named
        ``difficulty``, which DIVA reads as a 1-9 starting level), ``variants`` (rewordings with the same answer:
        ``"b+a="`` when a != b, and ``"0+a+b="``) and ``hints`` (one solution step: the full sum, ``"a+b=s"``).
    """
    from datasets import Dataset

    _check_rows(num_rows, seed)
    if num_rows > ARITHMETIC_NUM_PROBLEMS:
        raise ValueError(
            f"`num_rows` must be at most {ARITHMETIC_NUM_PROBLEMS} for `arithmetic_variants` (one row per distinct "
            f"problem), got {num_rows}."
        )
    problems = [(a, b) for a in range(10) for b in range(10)]
    random.Random(seed).shuffle(problems)
    rows: dict[str, list[Any]] = {"prompt": [], "answer": [], "id": [], "level": [], "variants": [], "hints": []}
    for a, b in problems[:num_rows]:
        rows["prompt"].append(f"{a}+{b}=")
        rows["answer"].append(str((a + b) % 10))
        rows["id"].append(f"arithmetic/{a}+{b}")
        rows["level"].append(_arithmetic_level(a, b))
        rows["variants"].append(([f"{b}+{a}="] if a != b else []) + [f"0+{a}+{b}="])
        rows["hints"].append([f"{a}+{b}={a + b}"])
    return Dataset.from_dict(rows)


# ---------------------------------------------------------------------------------------------------------------------
# Count-up chain (long completions: MinPRO's experiment)
# ---------------------------------------------------------------------------------------------------------------------

#: Tokens in a ``count_chain`` answer.
COUNT_CHAIN_LENGTH: int = 12


def make_count_chain_dataset(num_rows: int = 4096, seed: int = 0) -> Dataset:
    """Prompts ``"d="`` for a start digit d; the answer counts up from d for `COUNT_CHAIN_LENGTH` digits, mod 10.

    ``"3="`` -> ``"456789012345"``. Every token of the answer depends on the one before it, so a completion's prefix
    decides whether its later tokens can earn reward: the regime of prefix importance weights (MinPRO). ``id`` reads
    ``"count_chain/d"``. Start digits are drawn uniformly.
    """
    from datasets import Dataset

    _check_rows(num_rows, seed)
    rng = random.Random(seed)
    starts = [rng.randrange(10) for _ in range(num_rows)]
    return Dataset.from_dict(
        {
            "prompt": [f"{d}=" for d in starts],
            "answer": ["".join(str((d + k) % 10) for k in range(1, COUNT_CHAIN_LENGTH + 1)) for d in starts],
            "id": [f"count_chain/{d}" for d in starts],
        }
    )


def count_chain_reward(
    prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[str | None] | None = None, **kwargs: Any
) -> list[float | None]:
    """Length of the completion's prefix that matches the ``answer`` column, divided by the answer's length.

    Partial credit in [0, 1]: ``"4567x"`` for the answer ``"456789012345"`` scores 4/12; characters after the answer's
    length are ignored. A missing answer gives None (unscorable).

    Raises:
        ValueError: if the dataset has no ``answer`` column.
    """
    if answer is None:
        raise ValueError("The `count_chain_reward` reward needs an `answer` column in the dataset.")
    rewards: list[float | None] = []
    for completion, target in zip(completions, answer, strict=True):
        if not target:
            rewards.append(None)
            continue
        text, right = completion_text(completion), 0
        for got, want in zip(text, str(target)):
            if got != want:
                break
            right += 1
        rewards.append(right / len(str(target)))
    return rewards


def _make_copy_dataset(num_rows: int, seed: int) -> Dataset:
    return make_arithmetic_dataset(num_rows, seed, levels=[0])


def _make_carry_dataset(num_rows: int, seed: int) -> Dataset:
    return make_arithmetic_dataset(num_rows, seed, levels=[3])


register_task(
    Task(
        name="arithmetic",
        description="Last digit of a+b over single digits, four difficulty levels from copy to carry (default).",
        make_dataset=make_arithmetic_dataset,
        reward_funcs=[accuracy],
        max_completion_length=2,
        alphabet=ARITHMETIC_ALPHABET,
        metadata={"levels": {level: text for level, (text, _) in ARITHMETIC_LEVELS.items()}},
    )
)
register_task(
    Task(
        name="copy",
        description="Easiest arithmetic level only (a+0=): groups quickly become all-correct.",
        make_dataset=_make_copy_dataset,
        reward_funcs=[accuracy],
        max_completion_length=2,
        alphabet=ARITHMETIC_ALPHABET,
    )
)
register_task(
    Task(
        name="carry",
        description="Hardest arithmetic level only (last digit of a+b >= 10): groups stay mostly all-wrong.",
        make_dataset=_make_carry_dataset,
        reward_funcs=[accuracy],
        max_completion_length=2,
        alphabet=ARITHMETIC_ALPHABET,
    )
)
register_task(
    Task(
        name="arithmetic_variants",
        description="The 100 distinct arithmetic problems once each, with rewordings and hints (DIVA-GRPO's task).",
        make_dataset=make_arithmetic_variants_dataset,
        reward_funcs=[accuracy],
        max_completion_length=2,
        alphabet=ARITHMETIC_ALPHABET,
        default_num_rows=ARITHMETIC_NUM_PROBLEMS,
    )
)
register_task(
    Task(
        name="count_chain",
        description="Count up 12 digits from a start digit (partial credit per right prefix token): long completions.",
        make_dataset=make_count_chain_dataset,
        reward_funcs=[count_chain_reward],
        max_completion_length=COUNT_CHAIN_LENGTH,
        alphabet="0123456789=",
        binary_rewards=False,
    )
)
register_task(
    Task(
        name="addition",
        description="Full sum of two digits (one- or two-digit answers): a multi-token answer for token-level methods.",
        make_dataset=make_addition_dataset,
        reward_funcs=[accuracy],
        max_completion_length=3,
        alphabet=ARITHMETIC_ALPHABET,
    )
)
