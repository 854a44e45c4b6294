"""Text of a completion as TRL hands it to reward functions (standard or conversational).

A leaf module (it imports nothing from trl-ext), so that both the rewards and the tasks in :mod:`trl_ext.data`
import it at module level.
"""

from __future__ import annotations

from typing import Any

__all__ = ["completion_text"]


def completion_text(completion: str | list[dict[str, Any]]) -> str:
    """The text of one completion: the string itself, or the content of the last message of a conversational one."""
    if isinstance(completion, str):
        return completion
    if not completion:
        return ""
    content = completion[-1].get("content", "")
    if isinstance(content, list):  # content blocks
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""
