"""The shared training loop: logging, hooks, checkpoints and resume, with a toy step."""

import jax.numpy as jnp
import numpy as np
import pytest

from llmcxr_jax.checkpoint import CheckpointError, DamagedCheckpointError
from llmcxr_jax.train import loop
from llmcxr_jax.train import state_checkpoint as train_ckpt
from llmcxr_jax.train.metric_writers import read_metrics


class Counter:
    """Batches 1, 2, 3, ... with a checkpointable position."""

    def __init__(self):
        self.pos = 0

    def next(self):
        self.pos += 1
        return {"x": jnp.float32(self.pos)}

    def get_state(self):
        return {"pos": self.pos}

    def set_state(self, s):
        self.pos = s["pos"]


def step_fn(state, batch, step):
    assert step == int(state["n"])  # the steps done before this one
    return {"total": state["total"] + batch["x"], "n": state["n"] + 1}, {"loss": batch["x"]}


def log(window, at):
    scalars = {"loss": float(window[-1]["loss"]), "window": len(window)}
    return scalars, {"loss": f"{scalars['loss']:.1f}"}


def _run(workdir, steps, events, **kw):
    return loop.run(
        step_fn,
        {"total": jnp.float32(0), "n": jnp.int32(0)},
        Counter(),
        loop.Schedule(steps=steps, log_every=2, ckpt_every=2, sample_every=3, eval_every=4),
        log=log,
        workdir=workdir,
        evaluate=lambda step, state: {"eval": float(state["total"])},
        sample=lambda step, state, batch, writer: events.append(("sample", step)),
        export=lambda state: events.append(("export", int(state["n"]))),
        tensorboard=False,
        progress=False,
        **kw,
    )


def test_logs_hooks_checkpoints_and_resume(tmp_path, library_log):
    events = []
    state, last = _run(tmp_path, 5, events)
    assert float(state["total"]) == 15 and int(state["n"]) == 5
    logged = read_metrics(tmp_path)
    assert [m["step"] for m in logged] == [2, 4, 4, 5]  # log, eval, log (last step)
    assert [m.get("window") for m in logged] == [2, 2, None, 1]
    assert logged[2]["eval"] == 10
    assert last == {"loss": 5.0, "window": 1}
    assert events == [("sample", 3), ("export", 5)]
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [2, 4, 5]

    events.clear()
    state, last = _run(tmp_path, 7, events)  # resumes at 5 with the data position restored
    assert "resumed from" in library_log()
    assert float(state["total"]) == 28 and int(state["n"]) == 7
    assert events == [("sample", 6), ("export", 7)]
    assert last["loss"] == 7.0
    np.testing.assert_array_equal([m["step"] for m in read_metrics(tmp_path)][4:], [6, 7])


def test_without_a_workdir_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    events = []
    state, last = _run(None, 3, events)
    assert float(state["total"]) == 6 and last == {"loss": 3.0, "window": 1}
    assert events == [("sample", 3), ("export", 3)]
    assert list(tmp_path.iterdir()) == []


def _damage(step_dir, only_data=False):
    """Truncate a saved step's files to half (only its array data files with `only_data`)."""
    for f in sorted(step_dir.rglob("*")):
        if not f.is_file() or (only_data and "/d/" not in f.as_posix()):
            continue
        if only_data or f.stat().st_size > 100:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _final(workdir):
    ckpt = train_ckpt.TrainCheckpointer(workdir, every=2)
    try:
        step = ckpt.steps()[-1]
        return step, ckpt.read_flat(step)[0]
    finally:
        ckpt.close()


@pytest.mark.parametrize("damaged", [[5], [2, 4, 5]], ids=["newest", "all"])
def test_damaged_checkpoints_are_moved_aside_and_rewritten(tmp_path, library_log, damaged):
    _run(tmp_path / "ref", 5, [])
    _run(tmp_path / "run", 5, [])
    ckpts = tmp_path / "run" / "checkpoints"
    for step in damaged:
        _damage(ckpts / str(step))
    library_log()
    state, _ = _run(tmp_path / "run", 5, [])
    out = library_log()
    for step in damaged:
        assert f"checkpoint {ckpts}/{step}" in out and "truncated or damaged" in out
        assert (ckpts / f"{step}.damaged").is_dir()  # kept for inspection, not listed
    if damaged == [5]:
        assert f"resumed from {ckpts}/4" in out
    else:
        assert f"no usable checkpoint in {ckpts}: step(s) 5, 4, 2 damaged" in out
        assert "starting from step 0" in out
    assert train_ckpt.TrainCheckpointer(tmp_path / "run", every=2).steps() == [2, 4, 5]
    (sa, a), (sb, b) = _final(tmp_path / "ref"), _final(tmp_path / "run")
    assert sa == sb == 5 and a.keys() == b.keys()
    for k in a:  # the rewritten step 5 is the uninterrupted run's, bitwise
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)
    assert float(state["total"]) == 15 and int(state["n"]) == 5


def test_damaged_array_file_is_one_line_naming_the_file(tmp_path):
    _run(tmp_path, 2, [])
    _damage(tmp_path / "checkpoints" / "2", only_data=True)
    ckpt = train_ckpt.TrainCheckpointer(tmp_path, every=2)
    with pytest.raises(DamagedCheckpointError) as e:
        ckpt.restore(2, {"total": jnp.float32(0), "n": jnp.int32(0)})
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and len(msg) < 600, msg
    assert msg.startswith(f"checkpoint {tmp_path / 'checkpoints' / '2'}: file state/")
    assert "is truncated or damaged" in msg and "tensorstore" not in msg.lower()
    ckpt.close()


def test_a_checkpoint_of_another_state_is_refused_not_moved(tmp_path):
    _run(tmp_path, 2, [])
    ckpt = train_ckpt.TrainCheckpointer(tmp_path, every=2)
    other = {"total": jnp.zeros(3, jnp.float32), "n": jnp.int32(0)}
    with pytest.raises(CheckpointError, match=r"\['total'\] has shape \(\), this run's"):
        ckpt.restore_latest(other)
    assert ckpt.steps() == [2] and not ckpt.damaged
    ckpt.close()
