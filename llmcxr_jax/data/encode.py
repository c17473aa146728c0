"""Pre-tokenise a data set's images into VQ-GAN codes, resumably and split across hosts.

The records of a source are cut into fixed shards of `shard_size` consecutive records. Shard s is
written by host `s % process_count` to `codes-SSSSS-of-NNNNN.array_record`, each record a small
JSON object `{"id": ..., "codes": [...]}` (no pickle). A shard is written to a temporary name and
renamed when complete, so after an interruption a restart skips the finished shards, redoes the
rest, and the output equals one uninterrupted run: no record missing, none doubled. Images that
cannot be read are not encoded; they are listed with the reason in `errors-SSSSS.jsonl`, counted,
and reported.

`manifest.json` records what was encoded (checkpoint, source, shard size); a restart with other
settings is refused instead of mixing two encodings.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from llmcxr_jax import sharding
from llmcxr_jax.models.vqgan import VQGAN

MANIFEST = "manifest.json"


@dataclasses.dataclass
class EncodeReport:
    shards_written: int = 0
    shards_skipped: int = 0  # already complete from an earlier run
    records: int = 0
    errors: int = 0


def shard_name(s: int, n: int) -> str:
    return f"codes-{s:05d}-of-{n:05d}.array_record"


def _check_manifest(out: Path, manifest: dict[str, Any]) -> None:
    f = out / MANIFEST
    if f.exists():
        old = json.loads(f.read_text())
        if old != manifest:
            diff = {k: (old.get(k), v) for k, v in manifest.items() if old.get(k) != v}
            raise ValueError(
                f"{out} holds codes made with other settings {diff}; use a new --out directory"
            )
    else:
        tmp = f.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        tmp.replace(f)


def encode_dataset(
    model: VQGAN,
    source: Any,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 16,
    shard_size: int = 1024,
    provenance: dict[str, Any] | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    max_shards: int | None = None,
    progress: bool = True,
    mesh: jax.sharding.Mesh | None = None,
) -> EncodeReport:
    """Encode `source` (len / [i] records with `id` and `image` or `error`) into `out_dir`.

    `max_shards` stops after writing that many shards (for tests of resumption). With `mesh`,
    each batch is split over its devices (data parallel; `batch_size` must divide).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    n = len(source)
    num_shards = max(1, -(-n // shard_size))
    manifest = {
        "num_records": n,
        "shard_size": shard_size,
        "num_shards": num_shards,
        "num_codes": model.config.num_codes,
        "n_embed": model.config.n_embed,
        **(provenance or {}),
    }
    _check_manifest(out, manifest)
    encode = jax.jit(lambda m, x: m.encode(x))
    place: Any = jnp.asarray
    if mesh is not None and mesh.size > 1:
        if batch_size % mesh.size:
            raise ValueError(f"batch_size {batch_size} does not divide over {mesh.size} devices")
        batch_sharding = sharding.logical_sharding(mesh, ("activation_batch",))
        place = lambda x: jax.device_put(x, batch_sharding)  # noqa: E731
        graphdef, state = nnx.split(model)  # the weights replicated on every device
        model = nnx.merge(graphdef, jax.device_put(state, NamedSharding(mesh, PartitionSpec())))
    res = model.config.resolution
    report = EncodeReport()
    mine = [s for s in range(num_shards) if s % pc == pi]
    bar = tqdm(
        total=sum(min(shard_size, n - s * shard_size) for s in mine),
        unit="img",
        desc="encode-images",
        disable=not progress,
    )
    for s in mine:
        final = out / shard_name(s, num_shards)
        lo, hi = s * shard_size, min(n, (s + 1) * shard_size)
        if final.exists():
            report.shards_skipped += 1
            bar.update(hi - lo)
            continue
        if max_shards is not None and report.shards_written >= max_shards:
            break
        records: list[bytes] = []
        errors: list[dict[str, Any]] = []
        for start in range(lo, hi, batch_size):
            batch = [source[i] for i in range(start, min(hi, start + batch_size))]
            good = [r for r in batch if "error" not in r]
            errors += [
                {"index": start + j, "id": r["id"], "error": r["error"]}
                for j, r in enumerate(batch)
                if "error" in r
            ]
            if good:
                # fixed shape (one compile); RGB-replicated films: a grey model averages them
                x = np.zeros((batch_size, res, res, 3), np.float32)
                x[: len(good)] = np.stack([r["image"] for r in good])
                codes = np.asarray(encode(model, place(x)))[: len(good)]
                records += [
                    json.dumps({"id": r["id"], "codes": c.tolist()}).encode()
                    for r, c in zip(good, codes, strict=True)
                ]
            bar.update(len(batch))
        tmp = final.with_name(final.name + ".tmp")
        writer = ArrayRecordWriter(str(tmp), "group_size:1")
        for rec in records:
            writer.write(rec)
        writer.close()
        err_file = out / f"errors-{s:05d}.jsonl"
        if errors:
            err_file.write_text("".join(json.dumps(e) + "\n" for e in errors))
        elif err_file.exists():
            err_file.unlink()
        tmp.replace(final)  # the shard exists only once it is complete
        report.shards_written += 1
        report.records += len(records)
        report.errors += len(errors)
    bar.close()
    return report


def iter_codes(out_dir: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """(id, codes int32) of every encoded record, in source order."""
    out = Path(out_dir)
    manifest = json.loads((out / MANIFEST).read_text())
    for s in range(manifest["num_shards"]):
        f = out / shard_name(s, manifest["num_shards"])
        if not f.exists():
            raise FileNotFoundError(f"{f}: shard missing (encoding not finished?)")
        reader = ArrayRecordReader(str(f))
        for rec in reader.read_all():
            d = json.loads(rec)
            yield d["id"], np.asarray(d["codes"], np.int32)
        reader.close()


def read_errors(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for f in sorted(Path(out_dir).glob("errors-*.jsonl"))
        for line in f.read_text().splitlines()
    ]
