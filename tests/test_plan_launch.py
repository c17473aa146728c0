"""The memory planner on fake TPU-v4-like meshes, and the Cloud TPU launcher script."""

import subprocess
from pathlib import Path

import pytest

from llmcxr_jax import cli
from llmcxr_jax.configs import load
from llmcxr_jax.train import plan

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "launch" / "tpu_run.sh"


def test_dolly_3b_fits_a_v4_8_and_bytes_match_the_hand_count():
    config = load(str(ROOT / "configs" / "llmcxr_stage1.py"))
    assert (config.data.max_len, config.data.batch_size) == (2048, 16)
    p = plan.plan(config, (1, 4, 1))
    hand_p, hand_o = plan.hand_bytes(config, (1, 4, 1))
    assert abs(p.params_bytes - hand_p) <= 0.01 * hand_p
    assert abs(p.opt_bytes - hand_o) <= 0.01 * hand_o
    # dolly-v2-3b (2,775,086,080 parameters with its 50,280 rows) + 1,048 rows in each of the
    # two tables (51,305 padded to 51,328), fp32; FSDP over 4 chips splits all of it but the
    # biases and LayerNorms (32 x 6 x 2560 + 2 x 2560 replicated, 32 x (3 x 2560 + 10240) split
    # over `tensor`, here 1): 1,070,080 parameters on every chip
    total = 2_775_086_080 + 2 * (51328 - 50280) * 2560
    small = 32 * 6 * 2560 + 2 * 2560 + 32 * (3 * 2560 + 10240)
    assert hand_p == 4 * ((total - small) / 4 + small)
    assert p.fits(32.0), p.total_bytes / plan.GIB
    # XLA's arguments are the state and batch it sees: they include what we computed by hand
    assert p.argument_bytes >= p.params_bytes + p.opt_bytes
    one_chip = plan.plan(config, (1, 1, 1))
    assert not one_chip.fits(32.0)  # 11 GB of fp32 masters + 22 GB of Adam moments alone


def test_plan_cli_names_what_does_not_fit(capsys):
    cli.main(["plan", "--config", str(ROOT / "configs" / "llmcxr_stage1.py"), "--mesh", "1,2,2"])
    out = capsys.readouterr().out
    assert "(1, 4, 1)" in out and "(1, 2, 2)" in out
    assert "do not fit 32 GiB: (1, 1, 1)" in out
    assert "smallest fitting mesh:" in out
    assert "warning" not in out  # byte counts agree with the hand computation


def _launch(*args):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True)


def test_dry_run_prints_the_gcloud_commands():
    r = _launch(
        "--name",
        "cxr",
        "--zone",
        "us-central2-b",
        "--accelerator-type",
        "v4-32",
        "--create",
        "--delete",
        "--config",
        "configs/llmcxr_stage1.py",
        "--workdir",
        "gs://bucket/stage1",
        "--fetch-logs",
        "/tmp/cxr-logs",
        "--dry-run",
        "--",
        "--config.data.data_dir=gs://bucket/tfds",
    )
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("+ ")]
    assert lines[0] == (
        "+ gcloud compute tpus tpu-vm create cxr --zone us-central2-b "
        "--accelerator-type v4-32 --version tpu-ubuntu2204-base"
    )
    assert any(" scp " in line and "--worker=all" in line for line in lines)
    ssh = [line for line in lines if " ssh cxr " in line]
    on_all = [line for line in ssh if "--worker=all" in line]
    assert len(on_all) == 4 and "jax[tpu]" in on_all[1] and "pip install" in on_all[1]
    # the job is detached from the SSH session: a dropped connection does not stop it
    assert (
        "nohup setsid .venv/bin/llmcxr-jax train --config configs/llmcxr_stage1.py "
        "--workdir gs://bucket/stage1 --config.distributed=True "
        "--config.data.data_dir=gs://bucket/tfds > ~/llmcxr_logs/"
    ) in on_all[2]
    assert "< /dev/null &" in on_all[2] and "echo $! > ~/llmcxr_logs/" in on_all[2]
    follow = [line for line in ssh if "--worker=0" in line]
    assert len(follow) == 1 and "tail -n +1 --pid=" in follow[0]  # ends with the job
    assert "while kill -0" in on_all[3]  # every worker done before logs and delete
    assert "follow it with:" in r.stdout
    assert lines[-1].startswith("+ gcloud compute tpus tpu-vm delete cxr")
    assert not Path("/tmp/cxr-logs").exists()  # a dry run runs nothing


def test_clone_mode_and_bad_flags():
    r = _launch(
        "--name",
        "n",
        "--zone",
        "z",
        "--config",
        "c.py",
        "--workdir",
        "gs://w",
        "--repo",
        "https://example.org/llmcxr_jax.git",
        "--branch",
        "dev",
        "--no-follow",
        "--dry-run",
    )
    assert "git clone --depth 1 --branch dev https://example.org/llmcxr_jax.git" in r.stdout
    assert " scp " not in r.stdout
    runs = [line for line in r.stdout.splitlines() if line.startswith("+ ")]
    assert not any("--worker=0" in line for line in runs)  # --no-follow: started, not followed
    assert "follow it with:" in r.stdout
    r = _launch("--zone", "z", "--dry-run")
    assert r.returncode == 2 and "missing --name --config --workdir" in r.stderr
    r = _launch("--bogus")
    assert r.returncode == 2 and "unknown flag --bogus" in r.stderr


@pytest.mark.parametrize("script", [SCRIPT])
def test_shellcheck_is_clean(script):
    shellcheck = ROOT / ".venv" / "bin" / "shellcheck"
    exe = str(shellcheck) if shellcheck.exists() else "shellcheck"
    r = subprocess.run([exe, str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
