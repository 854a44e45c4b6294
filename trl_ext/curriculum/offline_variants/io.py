"""Reading the source split and writing the result as self-contained Parquet shards."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import datasets


def _is_saved_dataset_dir(path: str) -> bool:
    return os.path.isdir(path) and (
        os.path.isfile(os.path.join(path, "state.json")) or os.path.isfile(os.path.join(path, "dataset_dict.json"))
    )


def load_source_dataset(
    name_or_path: str,
    *,
    config: str | None = None,
    split: str = "train",
    data_files: Any = None,
    cache_dir: str | None = None,
) -> datasets.Dataset:
    """One split of a dataset: ``load_from_disk`` for a directory written by ``save_to_disk`` (a ``Dataset`` is used
    as is, a ``DatasetDict`` gives ``split``), else ``datasets.load_dataset(name_or_path, config, split=split)``."""
    import datasets as hf_datasets

    if _is_saved_dataset_dir(name_or_path):
        loaded = hf_datasets.load_from_disk(name_or_path)
        if isinstance(loaded, hf_datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"--split: {name_or_path} has no split {split!r} (splits: {list(loaded)})")
            return loaded[split]
        return loaded
    return hf_datasets.load_dataset(name_or_path, name=config, split=split, data_files=data_files, cache_dir=cache_dir)


def write_parquet(
    dataset: datasets.Dataset, out_dir: str, split: str = "train", *, max_shard_size: int | str = "500MB"
) -> list[str]:
    """Write ``dataset`` to ``out_dir/{split}-XXXXX-of-NNNNN.parquet`` shards; return the file paths.

    Image (and other decodable) columns are embedded as bytes first, as ``push_to_hub`` does, so the files are
    self-contained. Earlier shards of the same split in ``out_dir`` are removed, and each shard is written to a
    temporary name and renamed, so a reader never sees a mix of runs. ``datasets.load_dataset(out_dir)[split]``
    reads the result back with its features (images included).
    """
    from datasets.features.features import require_decoding
    from datasets.table import embed_table_storage
    from datasets.utils.py_utils import convert_file_size_to_int

    if not re.fullmatch(r"\w+", split or ""):
        raise ValueError(f"the output split name must be letters, digits or underscores, got {split!r}")
    os.makedirs(out_dir, exist_ok=True)
    stale = re.compile(rf"^{re.escape(split)}-\d{{5}}-of-\d{{5}}\.parquet$")
    for name in os.listdir(out_dir):
        if stale.match(name):
            os.remove(os.path.join(out_dir, name))
    num_shards = max(1, int(dataset._estimate_nbytes() / convert_file_size_to_int(max_shard_size)) + 1)
    num_shards = min(num_shards, max(len(dataset), 1))
    embed = any(require_decoding(feature, ignore_decode_attribute=True) for feature in dataset.features.values())
    paths = []
    for index in range(num_shards):
        shard = dataset.shard(num_shards=num_shards, index=index, contiguous=True)
        if embed:
            shard = shard.with_format("arrow").map(embed_table_storage, batched=True, keep_in_memory=True)
            shard = shard.with_format(None)
        path = os.path.join(out_dir, f"{split}-{index:05d}-of-{num_shards:05d}.parquet")
        shard.to_parquet(path + ".tmp")
        os.replace(path + ".tmp", path)
        paths.append(path)
    return paths
