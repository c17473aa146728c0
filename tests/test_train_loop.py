"""The shared training loop: logging, hooks, checkpoints and resume, with a toy step."""

import jax.numpy as jnp
import numpy as np

from llmcxr_jax.train import loop
from llmcxr_jax.train.metrics import read_metrics


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


def test_logs_hooks_checkpoints_and_resume(tmp_path, capsys):
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
    assert "resumed from" in capsys.readouterr().out
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
