"""Train-state checkpoints: the whole train state, resumable, robust to preemption and damage.

A train state is any pytree of arrays (nnx States, optax states, counters). It is stored flat,
one entry per leaf named by its tree path (`.ae['encoder']['conv_in']['kernel']`), so Orbax never
has to understand our containers, and restored into the tree structure the current code builds.
Beside it, a small JSON item holds what is not an array: the data iterator's state, the config,
the wall-clock time. (A model checkpoint, the weights and config a finished run exports, is
`llmcxr_jax/checkpoint.py`.)

- `workdir/checkpoints/<step>/` via `orbax.checkpoint.CheckpointManager`: saved every
  `every` steps (asynchronously), the newest `keep` kept.
- `restore_latest` resumes from the newest step; a newest checkpoint that cannot be read
  (truncated by a preemption, corrupted) is reported and the previous one is used.
- `PreemptionGuard` turns SIGTERM (how Cloud TPU announces a preemption) into a flag the
  training loop checks after each step, so it can save and exit cleanly.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from llmcxr_jax import checkpoint as model_checkpoint

log = logging.getLogger(__name__)


def flatten_state(state: Any) -> dict[str, Any]:
    """{tree path: leaf} of a train state (paths are stable names for checkpoints)."""
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    return {jax.tree_util.keystr(path): leaf for path, leaf in flat}


def unflatten_state(template: Any, flat: dict[str, Any]) -> Any:
    """The leaves of `flat` put back into `template`'s structure, matched by path."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for path, _ in paths:
        name = jax.tree_util.keystr(path)
        if name not in flat:
            raise KeyError(f"checkpoint has no entry {name}")
        leaves.append(flat[name])
    return jax.tree_util.tree_unflatten(treedef, leaves)


class TrainCheckpointer:
    def __init__(
        self, workdir: str | os.PathLike, *, every: int, keep: int = 3, async_save: bool = True
    ):
        p = str(workdir)
        # a URL workdir (gs://...) holds the steps itself; a local one in `checkpoints/`
        local = os.path.join(p, "checkpoints")
        self.directory = model_checkpoint.absolute(p if model_checkpoint.is_remote(p) else local)
        self.every = every
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                save_interval_steps=1,  # the loop decides when; see `should_save`
                enable_async_checkpointing=async_save,
                create=True,
            ),
            item_names=("state", "extra"),
        )

    def should_save(self, step: int) -> bool:
        return step % self.every == 0

    def save(
        self, step: int, state: Any, extra: dict[str, Any] | None = None, *, force: bool = False
    ) -> None:
        if not force and step in self.manager.all_steps():
            return
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(flatten_state(state)),
                extra=ocp.args.JsonSave(extra or {}),
            ),
            force=True,
        )

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore(self, step: int, template: Any) -> tuple[Any, dict[str, Any]]:
        """The train state of `step`, shaped and sharded like `template` (arrays or abstract)."""
        flat_t = flatten_state(template)

        def abstract(x: Any) -> Any:
            sharding = getattr(x, "sharding", None)
            return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

        target = {k: abstract(v) for k, v in flat_t.items()}
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), extra=ocp.args.JsonRestore()
            ),
        )
        flat = restored["state"]
        for k, v in flat_t.items():
            if tuple(np.shape(flat[k])) != tuple(np.shape(v)):
                raise ValueError(
                    f"step {step}: {k} has shape {np.shape(flat[k])}, expected {np.shape(v)}"
                )
        return unflatten_state(template, flat), dict(restored["extra"] or {})

    def read_flat(self, step: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The raw {tree path: array} entries and extra JSON of `step` (for inspection)."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(), extra=ocp.args.JsonRestore()),
        )
        return dict(restored["state"]), dict(restored["extra"] or {})

    def restore_latest(self, template: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """(step, state, extra) of the newest readable checkpoint, or None when there is none."""
        for step in reversed(self.steps()):
            try:
                state, extra = self.restore(step, template)
                return step, state, extra
            except Exception as e:  # truncated or corrupt: say so and fall back
                log.warning(
                    "checkpoint %s/%d is unreadable (%s: %s); trying the previous one",
                    self.directory,
                    step,
                    type(e).__name__,
                    str(e).splitlines()[0][:200],
                )
                print(
                    f"warning: checkpoint step {step} in {self.directory} is unreadable "
                    f"({type(e).__name__}); falling back to the previous one",
                    flush=True,
                )
        return None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


class PreemptionGuard:
    """Sets `.requested` on SIGTERM (TPU preemption notice) instead of dying mid-step."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.requested = False
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for s in signals:
                self._previous[s] = signal.signal(s, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)

    def __enter__(self) -> PreemptionGuard:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.restore()


def checkpoint_files(workdir: str | os.PathLike) -> list[Path]:
    """Every file of every saved step (for tests that damage checkpoints on purpose)."""
    return sorted(p for p in (Path(workdir) / "checkpoints").rglob("*") if p.is_file())
