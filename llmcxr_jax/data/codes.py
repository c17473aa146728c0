"""The store of VQ-GAN codes that `encode-images` writes: its format, writing and reading.

The records of a source are cut into fixed shards of `shard_size` consecutive records. Shard s
is `codes-SSSSS-of-NNNNN.array_record` (`shard_name`), each record a small JSON object
`{"id": ..., "codes": [...]}` (`code_record`; no pickle). A shard is written to a temporary name
and renamed when complete (`write_shard`), so after an interruption a restart skips the finished
shards and redoes the rest. Images that could not be encoded are listed with the reason in
`errors-SSSSS.jsonl` (`read_errors`).

`manifest.json` (`MANIFEST`) records what was encoded (checkpoint, source, shard size, number of
codes, codebook size); `check_manifest` refuses to add to a store made with other settings
instead of mixing two encodings. `iter_codes` reads every record back, in source order.

numpy and array_record only: the TFDS builders read codes without jax. The encoding itself (it
runs the VQ-GAN) is `llmcxr_jax/encode.py`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from llmcxr_jax.errors import InputError, MissingInputError

MANIFEST = "manifest.json"


def shard_name(s: int, n: int) -> str:
    return f"codes-{s:05d}-of-{n:05d}.array_record"


def errors_name(s: int) -> str:
    return f"errors-{s:05d}.jsonl"


def check_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Write `manifest` into `out`, or check that the one there is the same."""
    f = out / MANIFEST
    if f.exists():
        old = json.loads(f.read_text())
        if old != manifest:
            diff = {k: (old.get(k), v) for k, v in manifest.items() if old.get(k) != v}
            raise InputError(
                f"{out} holds codes made with other settings {diff}; use a new --out directory"
            )
    else:
        tmp = f.with_suffix(f".{os.getpid()}.tmp")  # hosts encoding together write it at once
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        tmp.replace(f)


def code_record(record_id: str, codes: np.ndarray) -> bytes:
    """One stored record: the JSON object `{"id": ..., "codes": [...]}`."""
    return json.dumps({"id": record_id, "codes": codes.tolist()}).encode()


def write_shard(
    out: Path, s: int, num_shards: int, records: Sequence[bytes], errors: Sequence[dict[str, Any]]
) -> None:
    """Shard `s` of `num_shards` with `records`, and its error list (removed when empty).

    The shard is written to a temporary file and renamed last: it exists only once complete.
    """
    final = out / shard_name(s, num_shards)
    tmp = final.with_name(final.name + ".tmp")
    writer = ArrayRecordWriter(str(tmp), "group_size:1")
    for rec in records:
        writer.write(rec)
    writer.close()
    err_file = out / errors_name(s)
    if errors:
        err_file.write_text("".join(json.dumps(e) + "\n" for e in errors))
    elif err_file.exists():
        err_file.unlink()
    tmp.replace(final)  # the shard exists only once it is complete


def iter_codes(out_dir: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """(id, codes int32) of every encoded record, in source order."""
    out = Path(out_dir)
    manifest = json.loads((out / MANIFEST).read_text())
    for s in range(manifest["num_shards"]):
        f = out / shard_name(s, manifest["num_shards"])
        if not f.exists():
            raise MissingInputError(f"{f}: shard missing (encoding not finished?)")
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
