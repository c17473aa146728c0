"""Image batches for VQ-GAN and classifier training: shuffled, per host, on the mesh, resumable.

A Grain pipeline over a random-access image source (`image_sources.py`): shuffle (a new order
every epoch), repeat, take this host's share, read in threads, drop records whose image could
not be read (counted and listed, never silently), batch, and assemble the hosts' batches into
global arrays sharded on the mesh's batch axes. Its position is Grain's iterator state: saved
with every checkpoint and restored on resume, so a resumed run sees exactly the batches an
uninterrupted run would.

It imports jax because its job is arrays on devices: the batches it returns are global
`jax.Array`s laid out on the training mesh.
"""

from __future__ import annotations

from typing import Any

import grain
import jax
import ml_collections
import numpy as np

from llmcxr_jax import sharding
from llmcxr_jax.errors import InputError


class ImageBatches:
    def __init__(
        self,
        source: Any,
        data: ml_collections.ConfigDict,
        mesh: jax.sharding.Mesh,
        keys: tuple[str, ...] = ("image",),
    ):
        pc, pi = jax.process_count(), jax.process_index()
        if data.batch_size % pc:
            raise InputError(f"batch_size {data.batch_size} is not divisible by {pc} hosts")
        self.keys = keys
        self.skipped = 0
        self.skipped_ids: list[dict[str, str]] = []
        ds = grain.MapDataset.source(source).shuffle(seed=data.seed).repeat()
        ds = ds[pi::pc]
        it = ds.to_iter_dataset(
            grain.ReadOptions(num_threads=data.get("num_threads", 4), prefetch_buffer_size=8)
        )
        it = it.filter(self._readable).map(self._select)
        self._dataset = it.batch(data.batch_size // pc, drop_remainder=True)
        self._iter = iter(self._dataset)
        self._sharding = sharding.logical_sharding(mesh, ("activation_batch",))

    def _readable(self, record: dict[str, Any]) -> bool:
        if "error" in record:
            self.skipped += 1
            self.skipped_ids.append({"id": record["id"], "error": record["error"]})
            return False
        return True

    def _select(self, record: dict[str, Any]) -> dict[str, np.ndarray]:
        return {k: np.asarray(record[k]) for k in self.keys}

    def next(self) -> dict[str, jax.Array]:
        local = next(self._iter)
        return {
            k: jax.make_array_from_process_local_data(self._sharding, np.asarray(v))
            for k, v in local.items()
        }

    def get_state(self) -> dict[str, Any]:
        return self._iter.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._iter = iter(self._dataset)
        self._iter.set_state(state)
