"""The instructions sent to the chat model: rewordings, hints that stop before the answer, and the authors' whole
solutions."""

from __future__ import annotations

from typing import Any

Messages = list[dict[str, Any]]

DEFAULT_MIN_HINTS = 3
DEFAULT_MAX_HINTS = 5
#: ``hint_mode`` values: ``"withhold"`` (default) asks for steps that stop before the answer, given the answer;
#: ``"authors"`` follows the DIVA authors' pipeline: a full 3-5 step solution ending in ``\boxed{}``, without the
#: answer, kept only when its boxed answer matches the gold answer (the last step then states the answer, so the
#: largest negative offsets, which show every step, show the whole solution).
HINT_MODES = ("withhold", "authors")
#: Rewordings the authors ask for per problem (``--num-rewordings`` default in their mode).
AUTHORS_NUM_REWORDINGS = 5


REWORDING_SYSTEM_PROMPT = (
    "You are a careful editor of math problems. You rewrite problems without changing their mathematical content."
)

REWORDING_TEMPLATE = """\
Rewrite the math problem below in {n} different ways.

Rules:
- Keep the meaning exactly: every given quantity, condition, variable name, and the question asked must stay the \
same, so that the answer does not change.
- Change only the wording and the sentence structure. Each rewording must differ from the original and from the \
other rewordings.
- Do not solve the problem, do not add hints, and do not state the answer.
- Keep mathematical notation (LaTeX) as written. Keep references to the figure or image (for example "as shown in \
the figure"), and keep answer options with their letters and contents unchanged.
- Each rewording must be a complete problem that can be read on its own.

Output exactly {n} rewordings as a numbered list ("1.", "2.", ...), each starting on a new line, and nothing else.

Problem:
{question}"""

HINT_SYSTEM_PROMPT = "You are a patient math teacher who writes short, correct step-by-step solutions."

HINT_TEMPLATE = """\
Here is a math problem{answer_clause}. The problem may refer to a figure that you cannot see; rely on the text\
{answer_reliance}.

Problem:
{question}
{answer_block}
Write a step-by-step solution split into {min_steps} to {max_steps} short steps. Each step is one or two sentences \
with the key idea or computation of that step.
Stop before the final answer: the last step leaves only the final computation or choice to the reader. No step may \
state the final answer{answer_repeat}, name the correct option, or use \\boxed.

Output only the steps as a numbered list ("1.", "2.", ...), one step per line, and nothing else."""


def rewording_messages(question: str, num_rewordings: int = 3) -> Messages:
    """The chat messages asking for ``num_rewordings`` rewordings of ``question`` that keep its meaning and answer.

    The model is asked for a numbered list (one rewording per item); :func:`parse_rewordings` reads the reply and
    also accepts a JSON list.
    """
    if not isinstance(num_rewordings, int) or num_rewordings < 1:
        raise ValueError(f"`num_rewordings` must be a positive integer, got {num_rewordings!r}")
    return [
        {"role": "system", "content": REWORDING_SYSTEM_PROMPT},
        {"role": "user", "content": REWORDING_TEMPLATE.format(n=num_rewordings, question=question.strip())},
    ]


def hint_messages(
    question: str,
    answer: str | None,
    *,
    min_steps: int = DEFAULT_MIN_HINTS,
    max_steps: int = DEFAULT_MAX_HINTS,
) -> Messages:
    """The chat messages asking for a ``min_steps``-``max_steps`` step solution that stops before the final answer.

    The correct final answer is given to the model (so that the steps head the right way) with the instruction not to
    state it; :func:`parse_hints` also drops any step that still leaks it. ``answer=None`` asks for a solution without
    a reference answer.
    """
    if not (isinstance(min_steps, int) and isinstance(max_steps, int) and 1 <= min_steps <= max_steps):
        raise ValueError(f"need 1 <= min_steps <= max_steps, got min_steps={min_steps!r}, max_steps={max_steps!r}")
    answer = None if answer is None or not str(answer).strip() else str(answer).strip()
    if answer is None:
        clause, reliance, block, repeat = "", "", "", ""
    else:
        clause = " and its correct final answer"
        reliance = " and on the given answer"
        block = f"\nCorrect final answer (for your guidance only): {answer}\n"
        repeat = f" ({answer})"
    text = HINT_TEMPLATE.format(
        answer_clause=clause,
        answer_reliance=reliance,
        question=question.strip(),
        answer_block=block,
        min_steps=min_steps,
        max_steps=max_steps,
        answer_repeat=repeat,
    )
    return [{"role": "system", "content": HINT_SYSTEM_PROMPT}, {"role": "user", "content": text}]


SOLUTION_TEMPLATE = """\
Here is a math problem. The problem may refer to a figure that you cannot see; rely on the text.

Problem:
{question}

Solve it in {min_steps} to {max_steps} short steps. Each step is one or two sentences with the key idea or computation \
of that step. The last step states the final answer as \\boxed{{...}}.

Output only the steps as a numbered list ("1.", "2.", ...), one step per line, and nothing else."""


def solution_messages(
    question: str, *, min_steps: int = DEFAULT_MIN_HINTS, max_steps: int = DEFAULT_MAX_HINTS
) -> Messages:
    """The authors' hint request (``hint_mode="authors"``): a complete ``min_steps``-``max_steps`` step solution whose
    last step gives the answer in ``\\boxed{}``. The answer is not given to the model; :func:`parse_solution_steps`
    keeps the solution only if its boxed answer matches the gold one."""
    if not (isinstance(min_steps, int) and isinstance(max_steps, int) and 1 <= min_steps <= max_steps):
        raise ValueError(f"need 1 <= min_steps <= max_steps, got min_steps={min_steps!r}, max_steps={max_steps!r}")
    text = SOLUTION_TEMPLATE.format(question=question.strip(), min_steps=min_steps, max_steps=max_steps)
    return [{"role": "system", "content": HINT_SYSTEM_PROMPT}, {"role": "user", "content": text}]
