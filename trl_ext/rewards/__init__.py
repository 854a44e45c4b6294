"""Reward functions with TRL's signature ``f(prompts, completions, **columns) -> list[float | None]``."""

from trl_ext.rewards.qa import (
    FORMAT_TAGS,
    answer_f1,
    build_transcript,
    extract_answer,
    is_valid_format,
    make_qa_f1_format_reward,
    normalize_answer,
    qa_f1_format_reward,
    qa_f1_format_score,
    strip_special_tokens,
    token_f1,
)

__all__ = [
    "FORMAT_TAGS",
    "answer_f1",
    "build_transcript",
    "extract_answer",
    "is_valid_format",
    "make_qa_f1_format_reward",
    "normalize_answer",
    "qa_f1_format_reward",
    "qa_f1_format_score",
    "strip_special_tokens",
    "token_f1",
]
