"""Pre-tokenise a data set's images into VQ-GAN codes, resumably and split across hosts.

The records of a source are cut into fixed shards of `shard_size` consecutive records (the store's
format: `data/codes.py`). Shard s is written by host `s % process_count`; a shard appears only
when complete, so after an interruption a restart skips the finished shards, redoes the rest,
and the output equals one uninterrupted run: no record missing, none doubled. Images that cannot
be read are not encoded; they are listed with the reason in `errors-SSSSS.jsonl`, counted, and
reported.

The store's manifest records what was encoded (checkpoint, source, shard size); a restart with
other settings is refused instead of mixing two encodings. Read the codes back with
`data.codes.iter_codes` (no jax needed).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from llmcxr_jax import sharding
from llmcxr_jax.data import codes as codes_store
from llmcxr_jax.errors import InputError
from llmcxr_jax.models.vqgan import VQGAN


@dataclasses.dataclass
class EncodeReport:
    shards_written: int = 0
    shards_skipped: int = 0  # already complete from an earlier run
    records: int = 0
    errors: int = 0


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
    codes_store.check_manifest(out, manifest)
    encode = jax.jit(lambda m, x: m.encode(x))
    place: Any = jnp.asarray
    if mesh is not None and mesh.size > 1:
        if batch_size % mesh.size:
            raise InputError(f"batch_size {batch_size} does not divide over {mesh.size} devices")
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
        final = out / codes_store.shard_name(s, num_shards)
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
                    codes_store.code_record(r["id"], c) for r, c in zip(good, codes, strict=True)
                ]
            bar.update(len(batch))
        codes_store.write_shard(out, s, num_shards, records, errors)
        report.shards_written += 1
        report.records += len(records)
        report.errors += len(errors)
    bar.close()
    return report
