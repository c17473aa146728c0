"""The training loop every trainer runs: the LM, the VQ-GAN and the CXR classifier.

    state, last = loop.run(step_fn, state, batches, loop.Schedule(steps=1000, ...),
                           workdir=workdir, log=log, evaluate=..., sample=..., export=...)

A trainer brings its pure, jitted step and a few hooks; the loop owns what they share:

- resume: the newest readable checkpoint of `workdir/checkpoints/` (train/state_checkpoint.py) is
  restored over `state`, and the data iterator put back where it stood; damaged checkpoints are
  named, moved aside (`<step>.damaged`) and written again when the run reaches their step; a run
  that finds none usable says so and starts from step 0;
- a SIGTERM (a preemption notice) saves the step just done and ends the run cleanly;
- checkpoints every `ckpt_every` steps and at the last step (state and data position);
- metrics: at every log step the `log` hook turns the steps' metrics into scalars, which go to
  `metrics.jsonl` and TensorBoard (train/metric_writers.py) and to the progress bar;
- `evaluate` and `sample` hooks at their own intervals, and `export` (the model checkpoint for
  inference) once the last step is done.

Without a workdir (the classifier trained inside a VQ-GAN run) nothing is written: no
checkpoints, no metrics, no SIGTERM handler; the loop only steps, logs to the bar and returns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import jax
from tqdm.auto import tqdm

from llmcxr_jax import distributed
from llmcxr_jax.train import state_checkpoint as train_ckpt
from llmcxr_jax.train.metric_writers import MetricWriter

logger = logging.getLogger(__name__)

Metrics = dict[str, Any]  # one step's metrics, as the step returned them (device arrays)
# (state, batch, step) -> (state, metrics); `step` counts the steps done before this one
StepFn = Callable[[Any, Any, int], tuple[Any, Metrics]]


class Batches(Protocol):
    """The data iterator: the next global batch, and a JSON-able position for checkpoints."""

    def next(self) -> Any: ...

    def get_state(self) -> Any: ...

    def set_state(self, state: Any) -> None: ...


@dataclasses.dataclass(frozen=True)
class Schedule:
    """When things happen, in steps (0: never)."""

    steps: int  # the step to reach
    log_every: int = 1  # and at the last step
    ckpt_every: int = 0  # and at the last step and on SIGTERM (with a workdir)
    keep: int = 3  # checkpoints kept
    eval_every: int = 0
    sample_every: int = 0

    @classmethod
    def from_config(cls, config: Any, steps: int) -> Schedule:
        """From a run config's `log_every`, `ckpt_every`, `keep_checkpoints`, `eval_every`,
        `sample_every`."""
        return cls(
            steps=int(steps),
            log_every=int(config.log_every),
            ckpt_every=int(config.ckpt_every),
            keep=int(config.keep_checkpoints),
            eval_every=int(config.get("eval_every", 0) or 0),
            sample_every=int(config.get("sample_every", 0) or 0),
        )


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where a log step stands, for rates and the ETA."""

    step: int  # steps done
    start: int  # the step this run started (or resumed) from
    steps: int  # the step to reach
    log_steps: int  # steps since the previous log (or the start)
    log_seconds: float  # seconds since the previous log (or the start)
    run_seconds: float  # seconds since the start

    @property
    def eta_s(self) -> float:
        return (self.steps - self.step) * self.run_seconds / max(self.step - self.start, 1)


# (metrics of every step since the previous log, progress) -> (scalars to write, bar postfix)
LogFn = Callable[[list[Metrics], Progress], tuple[dict[str, float], dict[str, str]]]


def run(
    step_fn: StepFn,
    state: Any,
    batches: Batches,
    schedule: Schedule,
    *,
    log: LogFn,
    workdir: str | os.PathLike | None = None,
    evaluate: Callable[[int, Any], dict[str, float]] | None = None,
    sample: Callable[[int, Any, Any, MetricWriter], None] | None = None,
    export: Callable[[Any], None] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    tensorboard: bool = True,
    progress: bool = True,
    desc: str = "train",
) -> tuple[Any, dict[str, float]]:
    """Train from `state` (or the newest checkpoint in `workdir`) to `schedule.steps`.

    Hooks: `log(window, progress)` at every log step; `evaluate(step, state)` every
    `eval_every` steps, its scalars written on their own line and added to the returned ones;
    `sample(step, state, batch, writer)` every `sample_every` steps; `export(state)` once the
    last step is done (not after a SIGTERM). The steps run under `jax.set_mesh(mesh)` when a
    mesh is given. Returns the final state and the last logged scalars.
    """
    ckpt = writer = None
    start = 0
    if workdir is not None:
        workdir = Path(workdir)
        ckpt = train_ckpt.TrainCheckpointer(workdir, every=schedule.ckpt_every, keep=schedule.keep)
        resumed = ckpt.restore_latest(state)
        # each damaged step met on the way was logged by restore_latest and moved aside
        if resumed is not None:
            start, state, extra = resumed
            batches.set_state(extra["data"])
            logger.info(f"resumed from {ckpt.directory}/{start}")
        elif ckpt.damaged:
            steps = ", ".join(str(d.step) for d in ckpt.damaged)
            logger.warning(
                f"no usable checkpoint in {ckpt.directory}: step(s) {steps} damaged (moved aside "
                f"to <step>{train_ckpt.DAMAGED_SUFFIX}, to be rewritten); starting from step 0"
            )
        if distributed.is_primary():  # one metrics file and one event stream per run
            writer = MetricWriter(workdir, enable_tensorboard=tensorboard)
    last: dict[str, float] = {}
    window: list[Metrics] = []
    steps, step = schedule.steps, start
    t_start = t_log = time.time()
    log_step = start
    bar = tqdm(
        total=steps, initial=start, desc=desc, disable=not progress or not distributed.is_primary()
    )
    guard = train_ckpt.PreemptionGuard() if ckpt is not None else None
    with (
        guard or contextlib.nullcontext(),
        jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext(),
    ):
        while step < steps:
            batch = batches.next()
            state, metrics = step_fn(state, batch, step)
            step += 1
            bar.update(1)
            window.append(metrics)
            if step % schedule.log_every == 0 or step == steps:
                now = time.time()
                at = Progress(step, start, steps, step - log_step, now - t_log, now - t_start)
                last, postfix = log(window, at)
                if writer is not None:
                    writer.scalars(step, last)
                bar.set_postfix(**postfix)
                window, t_log, log_step = [], now, step
            if evaluate is not None and schedule.eval_every and step % schedule.eval_every == 0:
                scores = evaluate(step, state)
                if writer is not None:
                    writer.scalars(step, scores)
                last.update(scores)
            if sample is not None and schedule.sample_every and step % schedule.sample_every == 0:
                sample(step, state, batch, writer)
            if ckpt is None or guard is None:
                continue
            stop = guard.stop_after(step)  # with several hosts: agreed by all, every step
            periodic = schedule.ckpt_every and ckpt.should_save(step)
            if periodic or step == steps or stop:
                ckpt.save(step, state, {"step": step}, data=batches.get_state())
            if stop:
                logger.info(f"SIGTERM: saved step {step} to {ckpt.directory}; exiting")
                break
    bar.close()
    if ckpt is not None:
        ckpt.close()
    if writer is not None:
        writer.close()
    if step >= steps and export is not None:
        export(state)
    return state, last
