"""The command line: ``python -m trl_ext.curriculum.offline_variants`` (usage in the package docstring)."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from trl_ext.curriculum.offline_variants.backends import OpenAICompatibleBackend, TransformersChatBackend
from trl_ext.curriculum.offline_variants.io import load_source_dataset, write_parquet
from trl_ext.curriculum.offline_variants.pipeline import add_variant_columns, summarize
from trl_ext.curriculum.offline_variants.prompts import (
    AUTHORS_NUM_REWORDINGS,
    DEFAULT_MAX_HINTS,
    DEFAULT_MIN_HINTS,
    HINT_MODES,
)

logger = logging.getLogger(__name__)


def _resolve_callable(spec: str) -> Callable:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--backend must be 'package.module:function', got {spec!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trl_ext.curriculum.offline_variants",
        description="Generate DIVA-GRPO's `variants` (rewordings) and `hints` (solution steps) columns with a chat "
        "model and write the dataset as Parquet shards.",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", required=True, help="Hub id, local path, or a save_to_disk directory")
    data.add_argument("--config", default=None, help="dataset configuration name")
    data.add_argument("--split", default="train", help="split to read (default: train)")
    data.add_argument("--data-files", nargs="+", default=None, help="data_files passed to load_dataset")
    data.add_argument("--cache-dir", default=None, help="datasets cache directory")
    data.add_argument("--question-column", default=None, help="column with the question text (default: use `prompt`)")
    data.add_argument("--answer-column", default="answer", help="column with the final answer (default: answer)")
    data.add_argument("--no-answer", action="store_true", help="ask for hints without giving the model the answer")
    data.add_argument("--id-column", default="id", help="problem id column, added from the row index if missing")
    data.add_argument("--limit", type=int, default=None, help="process only the first N rows")
    data.add_argument("--out", required=True, help="output directory for the Parquet shards")
    data.add_argument("--out-split", default=None, help="split name of the output files (default: from --split)")
    data.add_argument("--max-shard-size", default="500MB", help="Parquet shard size limit (default: 500MB)")

    gen = parser.add_argument_group("generation")
    gen.add_argument(
        "--num-rewordings",
        type=int,
        default=None,
        help=f"rewordings per problem (default: 3; {AUTHORS_NUM_REWORDINGS} with --hint-mode authors)",
    )
    gen.add_argument(
        "--hint-mode",
        choices=HINT_MODES,
        default="withhold",
        help="withhold (default): steps that stop before the answer; authors: the DIVA authors' pipeline, full "
        "solutions ending in \\boxed{} kept only when the boxed answer matches the gold answer",
    )
    gen.add_argument("--min-hints", type=int, default=DEFAULT_MIN_HINTS, help="fewest steps asked for (default: 3)")
    gen.add_argument("--max-hints", type=int, default=DEFAULT_MAX_HINTS, help="most steps kept (default: 5)")
    gen.add_argument("--overwrite", action="store_true", help="regenerate existing non-empty variants/hints")
    gen.add_argument("--batch-size", type=int, default=32, help="rows per backend call (default: 32)")
    gen.add_argument("--max-new-tokens", type=int, default=1024, help="reply length limit (default: 1024)")
    gen.add_argument("--temperature", type=float, default=0.7, help="sampling temperature, 0 = greedy (default 0.7)")
    gen.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default: 0.95)")
    gen.add_argument("--seed", type=int, default=0, help="torch seed of the local backend (default: 0)")

    backend = parser.add_argument_group("backend (exactly one of --model, --base-url, --backend)")
    backend.add_argument("--model", default=None, help="local chat model (Hub id or path): TransformersChatBackend")
    backend.add_argument("--device", default=None, help="device of --model (default: cuda if available, else cpu)")
    backend.add_argument("--dtype", default="auto", help="dtype of --model (default: auto)")
    backend.add_argument("--generation-batch-size", type=int, default=16, help="--model: conversations per generate")
    backend.add_argument("--trust-remote-code", action="store_true")
    backend.add_argument("--base-url", default=None, help="OpenAI-compatible server root, e.g. http://localhost:8000")
    backend.add_argument("--server-model", default=None, help="model name on the server (required with --base-url)")
    backend.add_argument("--api-key", default=None, help="server API key (default: $OPENAI_API_KEY if set)")
    backend.add_argument("--timeout", type=float, default=300.0, help="seconds per request (default: 300)")
    backend.add_argument("--max-retries", type=int, default=3, help="retries per request (default: 3)")
    backend.add_argument("--max-concurrency", type=int, default=8, help="parallel requests (default: 8)")
    backend.add_argument(
        "--backend", default=None, help="'package.module:function': a callable conversations -> replies"
    )
    return parser


def _check_backend_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    flags = (("--model", args.model), ("--base-url", args.base_url), ("--backend", args.backend))
    chosen = [flag for flag, value in flags if value]
    if len(chosen) != 1:
        parser.error(f"give exactly one of --model, --base-url, --backend (got {', '.join(chosen) or 'none'})")
    if args.base_url and not args.server_model:
        parser.error("--base-url needs --server-model (the model name the server serves)")


def _make_backend(args: argparse.Namespace) -> Any:
    if args.backend:
        return _resolve_callable(args.backend)
    if args.base_url:
        return OpenAICompatibleBackend(
            args.base_url,
            args.server_model,
            api_key=args.api_key or os.environ.get("OPENAI_API_KEY") or None,
            timeout=args.timeout,
            max_retries=args.max_retries,
            temperature=args.temperature,
            top_p=args.top_p,
            max_tokens=args.max_new_tokens,
            max_concurrency=args.max_concurrency,
        )
    return TransformersChatBackend(
        args.model,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        batch_size=args.generation_batch_size,
        device=args.device,
        top_p=args.top_p,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        seed=args.seed,
    )


def main(argv: Sequence[str] | None = None, backend: Any = None) -> int:
    """Command-line entry point (usage in the package docstring). ``backend`` replaces ``--model`` / ``--base-url``.

    Returns 0; the summary is printed to stdout (one ``key: value`` line each, then a JSON line).
    """
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.limit is not None and args.limit < 0:
        parser.error(f"--limit must be >= 0, got {args.limit}")
    split_match = re.match(r"\w+", args.split)  # "train[:1000]" -> "train"
    out_split = args.out_split or (split_match.group(0) if split_match else None)
    if not out_split or not re.fullmatch(r"\w+", out_split):
        parser.error(f"cannot use {out_split!r} as the output split name; pass --out-split NAME (letters, digits, _)")
    if backend is None:
        _check_backend_args(args, parser)

    dataset = load_source_dataset(
        args.dataset, config=args.config, split=args.split, data_files=args.data_files, cache_dir=args.cache_dir
    )
    if args.limit is not None:
        dataset = dataset.select(range(min(args.limit, len(dataset))))
    if backend is None:  # after loading the data, so that a data error does not wait for a model to load
        backend = _make_backend(args)
    logger.info("loaded %d row(s) from %s (split %s); backend %s", len(dataset), args.dataset, args.split, backend)
    result = add_variant_columns(
        dataset,
        backend,
        num_rewordings=args.num_rewordings
        if args.num_rewordings is not None
        else (AUTHORS_NUM_REWORDINGS if args.hint_mode == "authors" else 3),
        question_column=args.question_column,
        answer_column=None if args.no_answer else args.answer_column,
        id_column=args.id_column,
        overwrite=args.overwrite,
        batch_size=args.batch_size,
        min_hints=args.min_hints,
        max_hints=args.max_hints,
        hint_mode=args.hint_mode,
    )
    paths = write_parquet(result, args.out, out_split, max_shard_size=args.max_shard_size)
    summary = summarize(result)
    print(f"wrote {len(paths)} Parquet shard(s) to {args.out} (split {out_split!r})")
    print(f"rows: {summary['rows']}")
    print(f"mean rewordings per row: {summary['mean_rewordings_per_row']:.2f}")
    print(f"mean hints per row: {summary['mean_hints_per_row']:.2f}")
    print(f"rows without rewordings: {summary['rows_without_rewordings']}")
    print(f"rows without hints: {summary['rows_without_hints']}")
    print(f"rows without either: {summary['rows_without_either']}")
    print("summary: " + json.dumps(summary, sort_keys=True))
    return 0
