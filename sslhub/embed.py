"""Embedding a whole dataset with a model, at scale: any source the recipes read, sharded, resumable.

`embed_dataset` runs the evaluation feature extractor (`sslhub.evaluation.embedded_batches`) over a folder of
images, parquet files, a glob, a Hub dataset id, a `save_to_disk` folder or the sample. Images are decoded
exactly as in training (`sslhub.data.decode_image`: every mode to RGB, transparency on white, 16-bit
scaled) and preprocessed as the model's image processor says (`ModelReference.transform`), in DataLoader
workers, in the precision training would choose on the device. The embeddings go to `.safetensors`,
`.parquet` or `.npz` files with the file name (or row index) of every row, optionally in shards of
`shard_size` rows that are each written atomically, so `resume=True` continues after an interruption.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from .data import ImageDataset, collate, load_image_dataset
from .evaluation import embedded_batches, load_model

FORMATS = (".safetensors", ".parquet", ".npz")
OUTPUTS = ("pooler_output", "projection")


@dataclass
class EmbeddingRun:
    """What `embed_dataset` wrote: the files, how many rows, their width, and the unreadable images."""

    files: list[Path]
    rows: int
    dim: int
    unreadable: list[str] = field(default_factory=list)


def shard_paths(output: Path, num_rows: int, shard_size: int | None) -> list[Path]:
    """The files of an output: `output` itself, or `stem-00000-of-00004.suffix` ... with `shard_size`."""
    if not shard_size or num_rows <= shard_size:
        return [output]
    count = -(-num_rows // shard_size)
    return [output.with_name(f"{output.stem}-{k:05d}-of-{count:05d}{output.suffix}") for k in range(count)]


def _row_ids(batch: dict[str, Any], root: Path | None) -> list[str]:
    """The file name of each row (relative to a folder source) or, without one, its row index."""
    paths = batch.get("path") or [None] * len(batch["index"])
    ids = []
    for index, path in zip(batch["index"].tolist(), paths, strict=True):
        if path is None:
            ids.append(str(index))
        else:
            ids.append(os.path.relpath(path, root) if root is not None else str(path))
    return ids


def _write(path: Path, embeddings: torch.Tensor, ids: list[str], metadata: dict[str, str]) -> None:
    """One output file, written to `path.tmp` and renamed: an interruption never leaves a partial file."""
    partial = path.with_name(path.name + ".tmp")
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(
            {"embeddings": embeddings.contiguous()},
            str(partial),
            metadata={**metadata, "ids": json.dumps(ids)},
        )
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({"id": ids, "embedding": list(embeddings.numpy())})
        pq.write_table(table.replace_schema_metadata({**metadata}), partial)
    else:
        import numpy as np

        with open(partial, "wb") as handle:
            np.savez(
                handle, embeddings=embeddings.numpy(), files=np.array(ids), settings=metadata["settings"]
            )
    os.replace(partial, path)


def _read(path: Path) -> tuple[torch.Tensor, list[str], dict[str, str]]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as file:
            metadata = dict(file.metadata() or {})
            return file.get_tensor("embeddings"), json.loads(metadata.pop("ids")), metadata
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        metadata = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        embeddings = torch.tensor(table.column("embedding").to_pylist(), dtype=torch.float32)
        return embeddings.reshape(len(table), -1), table.column("id").to_pylist(), metadata
    import numpy as np

    with np.load(path) as data:
        settings = {"settings": str(data["settings"])} if "settings" in data else {}
        return torch.from_numpy(data["embeddings"]), [str(name) for name in data["files"]], settings


def _settings_of(path: Path) -> str | None:
    """The settings an output file was written with; None for a file that cannot be read."""
    try:
        return _read(path)[2].get("settings")
    except Exception:  # a damaged or foreign file is not a finished shard, whatever the reader raises
        return None


def load_embeddings(path: str | os.PathLike) -> tuple[torch.Tensor, list[str]]:
    """Read what `embed_dataset` wrote to `path` (every shard, in order): `(embeddings (N, D), ids)`."""
    path = Path(path)
    shards = sorted(path.parent.glob(f"{path.stem}-[0-9][0-9][0-9][0-9][0-9]-of-*{path.suffix}"))
    files = shards or [path]
    if not files[0].exists():
        raise FileNotFoundError(f"no embeddings at {path} (nor shards of it)")
    parts = [_read(file) for file in files]
    return torch.cat([p[0] for p in parts]), [i for p in parts for i in p[1]]


def embed_dataset(
    model: str,
    source: str,
    output: str | os.PathLike,
    *,
    split: str = "train",
    image_column: str | None = None,
    batch_size: int = 64,
    num_workers: int = 2,
    precision: str = "auto",
    device: str | None = None,
    shard_size: int | None = None,
    resume: bool = False,
    output_key: str = "pooler_output",
    progress: bool = True,
) -> EmbeddingRun:
    """Embed every image of a dataset and write the embeddings with the file name or row index of each.

    Args:
        model: a model folder or Hub id (sslhub, timm format or transformers image model), or `timm:<name>`.
        source: anything `sslhub.data.load_image_dataset` reads (folder, parquet, glob, Hub id, `sample`).
        output: a `.safetensors` (tensor `embeddings`, metadata `ids`), `.parquet` (columns `id`,
            `embedding`) or `.npz` (arrays `embeddings`, `files`) file.
        split: the split to embed.
        image_column: the image column, when it cannot be found.
        batch_size / num_workers: the DataLoader's.
        precision: `auto` (bf16 where the device computes it natively), `no`, `bf16` or `fp16`.
        device: a torch device; default CUDA when available, else CPU.
        shard_size: rows per output file (`stem-00000-of-0000K.suffix`); default one file.
        resume: keep the complete files an earlier run with the same settings wrote, and embed the rest.
        output_key: `pooler_output` (the backbone's embedding) or `projection`.
        progress: show a progress bar.

    Returns:
        An `EmbeddingRun` naming the files.
    """
    from .training.precision import describe, resolve_precision

    output = Path(output)
    if output.suffix not in FORMATS:
        raise ValueError(f"output must end in one of {list(FORMATS)}, got {output.name}")
    if output_key not in OUTPUTS:
        raise ValueError(f"output_key must be one of {list(OUTPUTS)}, got {output_key!r}")
    if shard_size is not None and shard_size < 1:
        raise ValueError(f"shard_size must be a positive number of rows, got {shard_size}")
    reference = load_model(model)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    choice = resolve_precision(precision, target)
    if progress:
        print(describe(choice))
    dataset = load_image_dataset(source, split, image_column=image_column)
    root = Path(source) if Path(source).is_dir() else None
    images = ImageDataset(dataset, reference.transform, with_paths=True)
    paths = shard_paths(output, len(images), shard_size)
    rows_per_file = shard_size if len(paths) > 1 else len(images)
    settings = json.dumps(
        {
            "model": reference.fingerprint,
            "source": source,
            "split": split,
            "output_key": output_key,
            "rows": len(images),
            "shard_size": rows_per_file,
        },
        sort_keys=True,
        default=repr,
    )
    done = []
    for path in paths:
        if not (resume and path.exists() and _settings_of(path) == settings):
            break
        done.append(path)
    if done and progress:
        print(f"resuming: {len(done)} of {len(paths)} files already written")

    net = reference.model.to(target)
    how = "pooled" if output_key == "pooler_output" else "projection"
    autocast = torch.autocast(target.type, dtype=torch.bfloat16, enabled=choice.mode == "bf16")
    half = torch.autocast(target.type, dtype=torch.float16, enabled=choice.mode == "fp16")
    unreadable: list[str] = []
    dim = _read(done[0])[0].shape[1] if done else 0
    for k in range(len(done), len(paths)):
        rows = range(k * rows_per_file, min((k + 1) * rows_per_file, len(images)))
        loader = DataLoader(
            Subset(images, rows), batch_size=batch_size, num_workers=num_workers, collate_fn=collate
        )
        embeddings, ids = [], []
        description = f"embedding {paths[k].name}" if len(paths) > 1 else "embedding"
        with autocast, half:
            for batch, embedding in embedded_batches(net, loader, how, progress, description):
                embeddings.append(embedding.cpu())
                ids += _row_ids(batch, root)
                unreadable += batch["unreadable"]
        if not embeddings:
            raise ValueError(f"none of rows {rows.start}-{rows.stop - 1} of {source} could be read")
        stacked = torch.cat(embeddings)
        dim = stacked.shape[1]
        _write(paths[k], stacked, ids, {"settings": settings, "model": str(model)})
    rows = sum(len(_read(path)[1]) for path in paths)
    return EmbeddingRun(files=paths, rows=rows, dim=dim, unreadable=unreadable)


__all__ = ["EmbeddingRun", "embed_dataset", "load_embeddings", "shard_paths"]
