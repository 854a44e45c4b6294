"""Offline generation of DIVA-GRPO's ``variants`` and ``hints`` columns with any chat model.

The DIVA trainer (``trainer: diva``) reads two optional list-of-string columns at training time: ``variants``
(rewordings of the problem that keep its answer) and ``hints`` (3-5 solution steps, shown as a partial solution to
hard problems). The paper generates both offline with an LLM; this package does the same with any chat model and
writes a dataset the trainer (or a recipe's ``dataset_name: DIR``) reads back directly.

Usage
-----
With a local Hugging Face model (``--model``, batched ``generate`` on the local GPU or CPU)::

    python -m trl_ext.curriculum.offline_variants --dataset FanqingM/MMK12 --split train \\
        --question-column question --answer-column answer \\
        --model Qwen/Qwen2.5-7B-Instruct --out data/mmk12-diva

With an OpenAI-compatible server (vLLM, TGI, SGLang; much faster for large datasets)::

    vllm serve Qwen/Qwen2.5-7B-Instruct --port 8000 &
    python -m trl_ext.curriculum.offline_variants --dataset FanqingM/MMK12 --split train \\
        --question-column question --answer-column answer \\
        --base-url http://localhost:8000 --server-model Qwen/Qwen2.5-7B-Instruct --out data/mmk12-diva

A dataset saved with ``Dataset.save_to_disk`` is read with ``load_from_disk``; anything else goes through
``datasets.load_dataset`` (``--config``, ``--data-files``). ``--limit 20`` is a cheap dry run; ``--backend
package.module:function`` plugs in any callable backend. The output directory holds Parquet shards named
``{split}-00000-of-0000N.parquet`` (images embedded), so ``datasets.load_dataset("data/mmk12-diva")["train"]`` or a
recipe with ``dataset_name: data/mmk12-diva`` reads it back with every original column plus ``variants``, ``hints``
and ``id`` (the row index as a string when the source has no ``id`` column). With MMK12's ``question`` column the
recipe also sets ``dataset_prompt_column: question`` so that the trainer gets its ``prompt``.

Python API
----------
* :func:`add_variant_columns` (``dataset, backend -> dataset``) is the whole pipeline on an in-memory dataset;
* a **backend** is any callable ``generate(conversations) -> texts`` that maps a list of chat conversations (each a
  list of ``{"role", "content"}`` messages) to one reply string per conversation: :class:`TransformersChatBackend`,
  :class:`OpenAICompatibleBackend`, or a plain function (tests use canned replies);
* :func:`rewording_messages` / :func:`hint_messages` build the instructions, :func:`parse_rewordings` /
  :func:`parse_hints` read the replies (never raising: an unreadable reply gives ``[]``).

Nothing heavy is imported at module import: ``datasets``, ``torch``, ``transformers`` and ``requests`` are imported
by the functions that need them.
"""

from trl_ext.curriculum.offline_variants.backends import ChatBackend, OpenAICompatibleBackend, TransformersChatBackend
from trl_ext.curriculum.offline_variants.cli import build_parser, main
from trl_ext.curriculum.offline_variants.io import load_source_dataset, write_parquet
from trl_ext.curriculum.offline_variants.parsing import (
    answer_leaks,
    boxed_answer,
    parse_hints,
    parse_list,
    parse_rewordings,
    parse_solution_steps,
)
from trl_ext.curriculum.offline_variants.pipeline import add_variant_columns, summarize
from trl_ext.curriculum.offline_variants.prompts import (
    AUTHORS_NUM_REWORDINGS,
    DEFAULT_MAX_HINTS,
    DEFAULT_MIN_HINTS,
    HINT_MODES,
    HINT_SYSTEM_PROMPT,
    HINT_TEMPLATE,
    REWORDING_SYSTEM_PROMPT,
    REWORDING_TEMPLATE,
    SOLUTION_TEMPLATE,
    Messages,
    hint_messages,
    rewording_messages,
    solution_messages,
)

__all__ = [
    "ChatBackend",
    "OpenAICompatibleBackend",
    "TransformersChatBackend",
    "add_variant_columns",
    "answer_leaks",
    "hint_messages",
    "load_source_dataset",
    "main",
    "HINT_MODES",
    "boxed_answer",
    "parse_hints",
    "parse_list",
    "parse_solution_steps",
    "solution_messages",
    "parse_rewordings",
    "rewording_messages",
    "summarize",
    "write_parquet",
    "AUTHORS_NUM_REWORDINGS",
    "DEFAULT_MAX_HINTS",
    "DEFAULT_MIN_HINTS",
    "HINT_SYSTEM_PROMPT",
    "HINT_TEMPLATE",
    "Messages",
    "REWORDING_SYSTEM_PROMPT",
    "REWORDING_TEMPLATE",
    "SOLUTION_TEMPLATE",
    "build_parser",
]
