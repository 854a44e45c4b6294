"""Built-in synthetic tasks (no downloads): datasets, reward functions and the quickstart settings."""

from trl_ext.data import deepsearch  # noqa: F401  (registers the "deepsearch" task)
from trl_ext.data.quickstart import QUICKSTART_SETTINGS, make_quickstart_dataset
from trl_ext.data.tasks import (
    ARITHMETIC_ALPHABET,
    ARITHMETIC_LEVELS,
    ARITHMETIC_NUM_PROBLEMS,
    COUNT_CHAIN_LENGTH,
    DEFAULT_TASK,
    RewardFunc,
    Task,
    accuracy,
    count_chain_reward,
    get_task,
    list_tasks,
    make_addition_dataset,
    make_arithmetic_dataset,
    make_arithmetic_variants_dataset,
    make_count_chain_dataset,
    register_task,
)
from trl_ext.rewards.text import completion_text

__all__ = [
    "ARITHMETIC_ALPHABET",
    "ARITHMETIC_LEVELS",
    "ARITHMETIC_NUM_PROBLEMS",
    "COUNT_CHAIN_LENGTH",
    "DEFAULT_TASK",
    "QUICKSTART_SETTINGS",
    "RewardFunc",
    "Task",
    "accuracy",
    "completion_text",
    "count_chain_reward",
    "get_task",
    "list_tasks",
    "make_addition_dataset",
    "make_arithmetic_dataset",
    "make_arithmetic_variants_dataset",
    "make_count_chain_dataset",
    "make_quickstart_dataset",
    "register_task",
]
