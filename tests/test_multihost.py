"""The pod path, run here: 2 local JAX processes x 2 CPU devices, joined over gloo.

Each process is a "host" (`llmcxr_jax.distributed.LocalHosts`): it reads its own input shard,
feeds its half of every global batch with `make_array_from_process_local_data`, takes part in
every collective and writes its part of every Orbax checkpoint. Select with `-m multihost`.
Every process is killed and reaped when a test ends, also when it fails (`LocalHosts` is a
context manager); ports are chosen free.
"""

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from lm_data import prepare

from llmcxr_jax import distributed
from llmcxr_jax.train import state_checkpoint as train_ckpt
from llmcxr_jax.train.metric_writers import read_metrics

pytestmark = pytest.mark.multihost

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "demo.py") + ":test"
STEPS = 12
HEARTBEAT_S = 5  # how long a dead host goes unnoticed (JAX's default is 100 s)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepare(tmp_path_factory.mktemp("lmdata"))


@pytest.fixture(scope="module", autouse=True)
def host_env(tmp_path_factory):
    """What every host process gets: one compilation cache for the module's runs (the same
    programs compile once, not once per launch)."""
    ENV.update(
        JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("xla_cache")),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    yield
    ENV.clear()


ENV: dict[str, str] = {}


def _train_args(data_dir, workdir, *extra):
    return [
        "train",
        "--config",
        CONFIG,
        "--workdir",
        str(workdir),
        f"--config.data.data_dir={data_dir}",
        "--config.data.input_shards=2",  # the same global batches on 1 host or 2
        "--config.mesh=(2,2,1)",  # data over the hosts, fsdp within each
        f"--config.steps={STEPS}",
        "--config.ckpt_every=4",
        "--config.eval_every=0",
        "--config.sample_every=0",
        *extra,
    ]


def _hosts(argv, hosts=2, devices=None):
    """`argv` on `hosts` local hosts with 4 devices in all (a context manager that reaps)."""
    return distributed.LocalHosts(
        argv,
        hosts=hosts,
        devices_per_host=devices or 4 // hosts,
        heartbeat_timeout_s=HEARTBEAT_S,
        env=ENV,
    )


def _launch(argv, hosts=2, devices=None, timeout_s=300):
    """Run `argv` on `hosts` local hosts to the end; (exits, outputs)."""
    with _hosts(argv, hosts, devices) as run:
        exits = run.wait(timeout_s=timeout_s)
        return exits, [run.output(i) for i in range(hosts)]


def _ok(exits, outputs):
    assert all(e.returncode == 0 for e in exits), "\n".join(
        [*(e.describe() for e in exits), *outputs]
    )


def _final(workdir):
    ckpt = train_ckpt.TrainCheckpointer(workdir, every=4)
    step = ckpt.steps()[-1]
    flat, _ = ckpt.read_flat(step)
    ckpt.close()
    return step, {k: np.asarray(v) for k, v in flat.items()}


def _wait_for_step(workdir, step, run, timeout_s=300):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        logged = read_metrics(workdir)
        if logged and logged[-1].get("step", 0) >= step:
            return
        if any(p.poll() is not None for p in run.procs):
            raise AssertionError("a host ended early:\n" + run.output(0) + run.output(1))
        time.sleep(0.1)
    raise AssertionError(f"step {step} not reached in {timeout_s} s")


@pytest.fixture(scope="module")
def two_host_run(data_dir, tmp_path_factory):
    """An uninterrupted 2-host run, the reference the other tests compare with."""
    workdir = tmp_path_factory.mktemp("two_hosts")
    exits, outputs = _launch(_train_args(data_dir, workdir))
    _ok(exits, outputs)
    return workdir, outputs


def test_two_hosts_train_as_one_host_does(data_dir, two_host_run, tmp_path):
    workdir, outputs = two_host_run
    for i, out in enumerate(outputs):
        assert f"host {i} of 2: 2 local device(s), 4 in all" in out, out
    exits, one = _launch(_train_args(data_dir, tmp_path / "one"), hosts=1, devices=4)
    _ok(exits, one)
    a = [m["loss"] for m in read_metrics(tmp_path / "one") if "loss" in m]
    b = [m["loss"] for m in read_metrics(workdir) if "loss" in m]  # written by host 0 only
    assert len(a) == len(b) == STEPS
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)
    # one Orbax checkpoint from both hosts; each host's input position beside it
    ckpts = workdir / "checkpoints"
    assert sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) == [4, 8, 12]
    data = ckpts / "12" / "data"
    assert sorted(p.name for p in data.glob("*.json")) == [
        "process_0-of-2.json",
        "process_1-of-2.json",
    ]
    shards = {s for f in data.glob("*.json") for s in json.loads(f.read_text())["shards"]}
    assert shards == {"0", "1"}


def test_sigterm_to_one_host_saves_on_both_and_resumes_bitwise(data_dir, two_host_run, tmp_path):
    workdir = tmp_path / "run"
    with _hosts(_train_args(data_dir, workdir)) as run:
        _wait_for_step(workdir, 5, run)
        run.signal(1, signal.SIGTERM)  # the preemption notice reaches one host
        exits = run.wait(timeout_s=120)
        outputs = [run.output(i) for i in range(2)]
    _ok(exits, outputs)
    saved = train_ckpt.TrainCheckpointer(workdir, every=4).steps()[-1]
    assert 5 <= saved < STEPS
    for out in outputs:  # both hosts stopped at the same step, after saving it together
        assert f"SIGTERM: saved step {saved}" in out, out
    exits, outputs = _launch(_train_args(data_dir, workdir))
    _ok(exits, outputs)
    assert all(f"checkpoints/{saved}" in out for out in outputs), outputs
    (sa, a), (sb, b) = _final(two_host_run[0]), _final(workdir)
    assert sa == sb == STEPS and a.keys() == b.keys()
    for k in a:  # parameters, optimizer state, step: bitwise (data order included)
        np.testing.assert_array_equal(b[k], a[k], err_msg=k)


def test_a_killed_host_stops_the_other_and_the_run_resumes(data_dir, two_host_run, tmp_path):
    workdir = tmp_path / "run"
    with _hosts(_train_args(data_dir, workdir)) as run:
        _wait_for_step(workdir, 6, run)
        run.signal(1, signal.SIGKILL)  # no notice: the host is gone
        t_kill = time.time()
        exits = run.wait(timeout_s=120)
        stopped_after = time.time() - t_kill
    by_host = {e.host: e for e in exits}
    assert by_host[1].returncode == -signal.SIGKILL
    assert by_host[0].returncode != 0
    assert stopped_after < HEARTBEAT_S + 20, stopped_after  # bounded, not a hang
    line = distributed.summarize(exits, HEARTBEAT_S)
    assert line and line.startswith("host 1 exited by SIGKILL"), line
    exits, outputs = _launch(_train_args(data_dir, workdir))
    _ok(exits, outputs)
    (sa, a), (sb, b) = _final(two_host_run[0]), _final(workdir)
    assert sa == sb == STEPS
    for k in a:
        np.testing.assert_array_equal(b[k], a[k], err_msg=k)


def test_encode_images_split_over_two_hosts_encodes_each_record_once(tmp_path):
    from flax import nnx

    from llmcxr_jax import checkpoint
    from llmcxr_jax.data import codes as codes_store
    from llmcxr_jax.models.vqgan import VQGAN, get_preset

    checkpoint.save_model(tmp_path / "vq", VQGAN(get_preset("demo-f8"), rngs=nnx.Rngs(0)))
    argv = ["encode-images", "--checkpoint", str(tmp_path / "vq"), "--source", "phantoms:18"]
    argv += ["--shard-size", "4", "--batch-size", "2"]
    exits, two = _launch([*argv, "--out", str(tmp_path / "two")])
    _ok(exits, two)
    exits, one = _launch([*argv, "--out", str(tmp_path / "one")], hosts=1, devices=2)
    _ok(exits, one)
    # 5 shards: host 0 writes 0, 2, 4 (4 + 4 + 2 images), host 1 writes 1 and 3
    assert "10 images encoded" in two[0] and "8 images encoded" in two[1], two
    a = dict(codes_store.iter_codes(tmp_path / "one"))
    b_items = list(codes_store.iter_codes(tmp_path / "two"))
    assert len(b_items) == len({k for k, _ in b_items}) == 18  # every record exactly once
    assert a.keys() == {k for k, _ in b_items}
    for k, v in b_items:
        np.testing.assert_array_equal(v, a[k], err_msg=k)


def test_generation_on_two_hosts_gives_the_one_host_outputs(two_host_run, tmp_path):
    from flax import nnx

    from llmcxr_jax import checkpoint
    from llmcxr_jax.models.vqgan import VQGAN, get_preset

    workdir, _ = two_host_run
    checkpoint.save_model(tmp_path / "vq", VQGAN(get_preset("demo-f8"), rngs=nnx.Rngs(0)))
    codes = np.random.default_rng(0).integers(0, 256, size=(5, 64))
    np.save(tmp_path / "codes.npy", codes)
    argv = ["generate", "report", "--checkpoint", str(workdir), "--vqgan", str(tmp_path / "vq")]
    argv += ["--codes"]
    argv += [str(tmp_path / "codes.npy"), "--batch-size", "2", "--max-new-tokens", "8"]
    argv += ["--seed", "3", "--top-p", "0.9"]  # sampled: each batch's key is its number
    exits, two = _launch([*argv, "--out", str(tmp_path / "two")])
    _ok(exits, two)
    exits, one = _launch([*argv, "--out", str(tmp_path / "one")], hosts=1, devices=2)
    _ok(exits, one)

    def reports(out):
        return [line.split("] ", 1)[-1] for line in out.splitlines() if "codes.npy[" in line]

    assert len(reports(one[0])) == 5
    assert reports(two[0]) == reports(one[0])
    assert reports(two[1]) == []  # host 0 writes the outputs
    assert (tmp_path / "two" / "reports.jsonl").read_text() == (
        tmp_path / "one" / "reports.jsonl"
    ).read_text()


def test_local_hosts_command_needs_a_command(capsys):
    from llmcxr_jax import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["local-hosts", "--hosts", "2", "--"])
    assert e.value.code == 2
    assert "give the command to run" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["local-hosts", "--hosts", "0", "--", "train"])
    assert e.value.code == 2


def test_summary_names_the_first_host_to_fail():
    exits = [
        distributed.HostExit(1, -signal.SIGKILL, 10.0),
        distributed.HostExit(0, -signal.SIGABRT, 16.5),
    ]
    line = distributed.summarize(exits, 5)
    assert line.startswith("host 1 exited by SIGKILL after 10.0 s; the other host(s) stopped 6.5 s")
    assert distributed.summarize([distributed.HostExit(0, 0, 1.0)], 5) is None
