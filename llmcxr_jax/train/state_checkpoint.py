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
- The data position is saved per host (`data/process_<i>-of-<n>.json`): on a pod every host
  reads its own input shards, so each resumes from its own file.
- `PreemptionGuard` turns SIGTERM (how Cloud TPU announces a preemption) into a stop the
  training loop checks after each step, so it can save and exit cleanly; with several hosts
  all of them stop after the same step, whichever host got the signal.
"""

from __future__ import annotations

import dataclasses
import json
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
from llmcxr_jax import distributed

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


class HostDataHandler(ocp.CheckpointHandler):
    """Each host's data position as its own JSON file, `process_<i>-of-<n>.json`.

    Orbax's JSON handler writes from the primary host only, which on a pod would resume every
    host at host 0's position. (Grain's own handler does the same per host but only for whole
    Grain iterators; ours are several per host.)"""

    @staticmethod
    def _name() -> str:
        return f"process_{jax.process_index()}-of-{jax.process_count()}.json"

    def save(self, directory: epath.Path, args: HostDataSave) -> None:
        (directory / self._name()).write_text(json.dumps(args.state))

    def restore(self, directory: epath.Path, args: HostDataRestore | None = None) -> Any:
        f = directory / self._name()
        if not f.exists():
            saved = sorted(p.name for p in directory.glob("process_*.json"))
            raise model_checkpoint.CheckpointError(
                f"{directory}: no {f.name} (data positions saved as {saved}); resume with as "
                "many hosts as the run that saved it"
            )
        return json.loads(f.read_text())

    def metadata(self, directory: epath.Path) -> None:
        return None

    def finalize(self, directory: epath.Path) -> None:
        pass

    def close(self) -> None:
        pass


@ocp.args.register_with_handler(HostDataHandler, for_save=True)
@dataclasses.dataclass
class HostDataSave(ocp.args.CheckpointArgs):
    state: Any


@ocp.args.register_with_handler(HostDataHandler, for_restore=True)
@dataclasses.dataclass
class HostDataRestore(ocp.args.CheckpointArgs):
    pass


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
                "data": HostDataHandler(),
            },
        )
        self.damaged: list[Damaged] = []  # what the last `restore_latest` moved aside

    def should_save(self, step: int) -> bool:
        return step % self.every == 0

    def save(
        self,
        step: int,
        state: Any,
        extra: dict[str, Any] | None = None,
        *,
        data: Any = None,
        force: bool = False,
    ) -> None:
        """Save `state` (arrays, from every host), `extra` (JSON, written by the primary host)
        and `data` (this host's data position, JSON, one file per host)."""
        if not force and step in self.manager.all_steps():
            return
        items = {
            "state": ocp.args.StandardSave(flatten_state(state)),
            "extra": ocp.args.JsonSave(extra or {}),
        }
        if data is not None:
            items["data"] = HostDataSave(data)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

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
        items = {"state": ocp.args.StandardRestore(target), "extra": ocp.args.JsonRestore()}
        per_host_data = (epath.Path(where) / "data").exists()  # absent before multi-host
        if per_host_data:
            items["data"] = HostDataRestore()
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except model_checkpoint.CheckpointError:
            raise  # readable, but not this run's (another host count): not damage
        except Exception as e:  # Orbax raises many types; one line naming the file
            raise model_checkpoint.read_error(where, e) from e
        flat = restored["state"]
        for k, v in flat_t.items():
            if tuple(np.shape(flat[k])) != tuple(np.shape(v)):
                raise model_checkpoint.CheckpointError(
                    f"{where}: {k} has shape {np.shape(flat[k])}, expected {np.shape(v)}"
                )
        extra = dict(restored["extra"] or {})
        if per_host_data:
            extra["data"] = restored["data"]
        return unflatten_state(template, flat), extra

    def read_flat(self, step: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The raw {tree path: array} entries and extra JSON of `step` (for inspection), on
        this process's first device whatever devices or hosts saved them."""
        try:
            meta = self.manager.item_metadata(step)["state"]
            meta = getattr(meta, "tree", meta)
            one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            target = {
                k: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one) for k, m in meta.items()
            }
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), extra=ocp.args.JsonRestore()
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
    """A preemption notice (SIGTERM) becomes a stop after the current step, not a death mid-step.

    One process: a Python handler sets `.requested`. Several: the signal reaches one host (or
    all, at different moments); JAX's preemption notifier, installed by
    `jax.distributed.initialize`, catches it and the coordination service tells every host, so
    that `stop_after(step)` is True on all of them after the same step and they save one
    consistent checkpoint. (A Python handler there would replace JAX's and blind it.)
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.requested = False
        self.multihost = jax.process_count() > 1
        self._previous: dict[int, Any] = {}
        if not self.multihost and threading.current_thread() is threading.main_thread():
            for s in signals:
                self._previous[s] = signal.signal(s, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def stop_after(self, step: int) -> bool:
        """Whether to save `step` and stop. With several hosts, every host must ask at every
        step (the hosts agree on the step through these calls)."""
        if self.multihost and distributed.preemption_requested(step):
            self.requested = True
        return self.requested

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
