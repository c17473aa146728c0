"""Train-state checkpoints: the whole train state, resumable, robust to preemption and damage.

A train state is any pytree of arrays (nnx States, optax states, counters). It is stored flat,
one entry per leaf named by its tree path (`.ae['encoder']['conv_in']['kernel']`), so Orbax never
has to understand our containers, and restored into the tree structure the current code builds.
Beside it, a small JSON item holds what is not an array: the data iterator's state, the config,
the wall-clock time. (A model checkpoint, the weights and config a finished run exports, is
`llmcxr_jax/checkpoint.py`.)

- `workdir/checkpoints/<step>/` via `orbax.checkpoint.CheckpointManager`: saved every
  `every` steps (asynchronously), the newest `keep` kept.
- `restore_latest` resumes from the newest step; a checkpoint whose files cannot be read
  (truncated by a preemption, corrupted) is reported, moved aside to `<step>.damaged` (renamed,
  not deleted: Orbax no longer lists it, so the next save of that step writes it again) and the
  previous one is used. A checkpoint that does not match the state the current code builds (a
  changed config) is not damaged: it stops the run with a `CheckpointError` and stays in place.
- `PreemptionGuard` turns SIGTERM (how Cloud TPU announces a preemption) into a flag the
  training loop checks after each step, so it can save and exit cleanly.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from llmcxr_jax import checkpoint as model_checkpoint

log = logging.getLogger(__name__)

DAMAGED_SUFFIX = ".damaged"  # a damaged step `<step>/` is renamed `<step>.damaged/`


@dataclasses.dataclass(frozen=True)
class Damaged:
    """A step found damaged at restore, and where its files were moved."""

    step: int
    moved_to: str
    reason: str  # one line: the file and what is wrong with it


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
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "extra": ocp.JsonCheckpointHandler(),
            },
        )
        self.damaged: list[Damaged] = []  # what the last `restore_latest` moved aside

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

    def step_dir(self, step: int) -> str:
        return f"{self.directory}/{step}"

    def restore(self, step: int, template: Any) -> tuple[Any, dict[str, Any]]:
        """The train state of `step`, shaped and sharded like `template` (arrays or abstract).

        Raises `DamagedCheckpointError` (one line: the file and the reason) when the step's files
        cannot be read, and `CheckpointError` when they hold a different state than `template`.
        """
        flat_t = flatten_state(template)
        where = self.step_dir(step)
        try:
            stored = model_checkpoint.stored_shapes(self.manager.item_metadata(step)["state"])
        except Exception as e:
            raise model_checkpoint.read_error(where, e) from e
        model_checkpoint.check_stored_shapes(
            where, stored, flat_t, "this run's train state (was the config changed?)"
        )

        def abstract(x: Any) -> Any:
            sharding = getattr(x, "sharding", None)
            return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

        target = {k: abstract(v) for k, v in flat_t.items()}
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), extra=ocp.args.JsonRestore()
                ),
            )
        except Exception as e:  # Orbax raises many types; one line naming the file
            raise model_checkpoint.read_error(where, e) from e
        flat = restored["state"]
        for k, v in flat_t.items():
            if tuple(np.shape(flat[k])) != tuple(np.shape(v)):
                raise model_checkpoint.CheckpointError(
                    f"{where}: {k} has shape {np.shape(flat[k])}, expected {np.shape(v)}"
                )
        return unflatten_state(template, flat), dict(restored["extra"] or {})

    def read_flat(self, step: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The raw {tree path: array} entries and extra JSON of `step` (for inspection)."""
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(), extra=ocp.args.JsonRestore()
                ),
            )
        except Exception as e:
            raise model_checkpoint.read_error(self.step_dir(step), e) from e
        return dict(restored["state"]), dict(restored["extra"] or {})

    def restore_latest(self, template: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """(step, state, extra) of the newest readable checkpoint, or None when there is none.

        Every damaged step met on the way (newest first) is logged, moved aside to
        `<step>.damaged` and listed in `self.damaged`; the next save of that step writes it
        anew. A checkpoint that does not match `template` raises `CheckpointError`.
        """
        self.damaged = []
        for step in reversed(self.steps()):
            try:
                state, extra = self.restore(step, template)
                return step, state, extra
            except model_checkpoint.DamagedCheckpointError as e:
                moved = self._move_aside(step)
                self.damaged.append(Damaged(step, moved, str(e)))
                log.warning("%s; moved aside to %s, to be rewritten", e, moved)
        return None

    def _move_aside(self, step: int) -> str:
        """Rename the step's directory to `<step>.damaged` (`.damaged-2`, ... when taken)."""
        if jax.process_count() > 1:  # every process has read the step before it moves
            ocp.multihost.sync_global_processes(f"llmcxr_damaged_{step}")
        src = epath.Path(self.step_dir(step))
        dst = epath.Path(f"{src}{DAMAGED_SUFFIX}")
        n = 1
        while dst.exists():
            n += 1
            dst = epath.Path(f"{src}{DAMAGED_SUFFIX}-{n}")
        if jax.process_index() == 0:
            src.rename(dst)
        if jax.process_count() > 1:
            ocp.multihost.sync_global_processes(f"llmcxr_moved_aside_{step}")
        self.manager.reload()  # Orbax forgets the step: `save` writes it again
        return str(dst)

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
