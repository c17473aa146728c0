"""benchmarks/accelerator.py works (its speed is not checked here: that needs an accelerator).

`--tiny` runs every part end to end on this CPU, each in its own process: the train step
`train` runs and decoding, ours and PyTorch's, then the tables and the JSON line, recorded where
`--results` says (never in the repository's benchmarks/results). On a CPU the peak is unknown,
so MFU and the decoding floor must read n/a rather than a guess. The peak table, the stage-1
config without ml_collections, and `tpu_run.sh --job bench-accelerator` are checked on their
own.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmcxr_jax import accelerators
from llmcxr_jax.models.gpt_neox import get_preset

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "accelerator.py"
REPO_RECORD = ROOT / "benchmarks" / "results" / "accelerator.md"


def _script_module():
    spec = importlib.util.spec_from_file_location("accelerator_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_measures_both_engines_and_records_it(tmp_path):
    before = REPO_RECORD.read_text() if REPO_RECORD.exists() else None
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    # one CPU device (not make test's 8), and XLA's quick compile: this checks that it runs,
    # not how fast (halves the JAX parts' compile time on 2 cores)
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    line = next(s for s in r.stdout.splitlines() if s.startswith("{") and '"benchmark"' in s)
    summary = json.loads(line)
    assert summary["benchmark"] == "accelerator" and summary["tiny"] is True
    assert summary["device_kind"] == "cpu" and summary["peak_bf16_flops"] is None

    train = {row["engine"]: row for row in summary["train"]}
    for engine in ("JAX (ours)", "PyTorch eager"):
        row = train[engine]
        assert row["status"] == "ok", row
        assert (row["batch"], row["seq"]) == (2, 64)
        assert row["tokens_per_s"] > 0 and row["tokens_per_s_per_device"] > 0
        assert row["mfu"] is None  # no known peak for a CPU
        assert math.isfinite(row["loss"]) and abs(row["loss"] - math.log(256)) < 1.0
    assert train["PyTorch torch.compile"]["status"].startswith("skipped")  # auto: CUDA only

    decode = [row for row in summary["decode"] if row["status"] == "ok"]
    for engine in ("JAX (ours)", "PyTorch eager"):
        rows = {row["batch"]: row for row in decode if row["engine"] == engine}
        assert set(rows) == {1, 16}
        assert all(
            row["tokens_per_s"] > 0 and row["floor_ms_per_token"] is None for row in rows.values()
        )

    out = r.stdout
    assert "### Train step" in out and "### Decoding" in out
    jax_row = next(s for s in out.splitlines() if s.startswith("| JAX (ours) | 2 x 64 |"))
    assert "| n/a |" in jax_row  # MFU
    assert "| h100 + pcie | H100 PCIe | 756 | 2.00 |" in out  # the peak table is printed

    record = (tmp_path / "accelerator.md").read_text()
    assert "`python benchmarks/accelerator.py --tiny --results" in record
    assert line in record and "| JAX (ours) | 2 x 64 |" in record
    after = REPO_RECORD.read_text() if REPO_RECORD.exists() else None
    assert after == before  # the repository's record is untouched


@pytest.mark.parametrize(
    "kind, name, flops, bandwidth",
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989e12, 3.35e12),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756e12, 2.0e12),
        ("NVIDIA H200", "H200", 989e12, 4.8e12),
        ("NVIDIA A100-SXM4-80GB", "A100 80GB", 312e12, 2.0e12),
        ("TPU v4", "TPU v4", 275e12, 1.2e12),
        ("TPU v5 lite", "TPU v5e", 197e12, 0.82e12),
        ("TPU v5", "TPU v5p", 459e12, 2.76e12),
        ("TPU v6 lite", "TPU v6e", 918e12, 1.64e12),
    ],
)
def test_peaks_by_device_kind(kind, name, flops, bandwidth):
    acc = accelerators.lookup(kind)
    assert (acc.name, acc.peak_bf16_flops, acc.hbm_bytes_per_s) == (name, flops, bandwidth)
    assert accelerators.peak_flops(kind) == flops and accelerators.hbm_bandwidth(kind) == bandwidth


def test_cpus_have_no_peak_and_mfu_is_not_guessed():
    assert accelerators.lookup("cpu") is None and accelerators.peak_flops("cpu") is None
    assert accelerators.mfu(1e4, 1e10, "cpu") is None
    assert accelerators.mfu(1e4, 1e10, "TPU v4") == pytest.approx(1e14 / 275e12)


def test_flops_per_token_of_dolly_3b():
    cfg = get_preset("dolly-v2-3b", vocab_size=51305, vocab_pad_multiple=128)
    n = cfg.num_params() - 51305 * 2560  # the input embedding is a lookup
    assert accelerators.flops_per_token(cfg, 2048) == 6 * n + 12 * 32 * 2560 * 2048
    assert 17e9 < accelerators.flops_per_token(cfg, 2048) < 19e9


def test_stage1_config_runs_without_ml_collections(monkeypatch):
    bench = _script_module()
    monkeypatch.setitem(sys.modules, "ml_collections", None)  # `import ml_collections` fails
    config = bench.stage1_config()
    assert not type(config).__module__.startswith("ml_collections")
    assert dict(config.model_overrides) == {
        "dtype": "bfloat16",
        "scan_layers": True,
        "remat_policy": "full",
    }
    assert (config.optim.lr, config.optim.get("clip"), config.data.max_len) == (5e-6, 1.0, 2048)
    from llmcxr_jax.train import optim

    optim.optimizer(config.optim)  # the optimizer `train` builds takes it as is
    cfg = bench.model_config(False, config)
    assert (cfg.vocab_size, cfg.padded_vocab_size, cfg.dtype) == (51305, 51328, "bfloat16")
    assert (cfg.param_dtype, cfg.remat_policy, cfg.scan_layers) == ("float32", "full", True)


def test_batch_ladder_goes_down_from_the_start():
    bench = _script_module()
    assert bench.ladder(16) == [16, 12, 8, 6, 4, 3, 2, 1]
    assert bench.ladder(5) == [4, 3, 2, 1]
    assert bench.auto_start(True, None) == 2
    assert bench.auto_start(False, 75 * 1024**3) == 16  # an H100
    assert bench.auto_start(False, 131 * 1024**3) == 32  # an H200


def test_tpu_run_dry_run_shows_the_benchmark_job():
    r = subprocess.run(
        [
            "bash",
            str(ROOT / "launch" / "tpu_run.sh"),
            "--name",
            "bench",
            "--zone",
            "us-central2-b",
            "--job",
            "bench-accelerator",
            "--fetch-logs",
            "/tmp/bench-logs-dry",
            "--dry-run",
            "--",
            "--batch-start",
            "8",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr  # no --config / --workdir needed
    assert "warning" not in r.stderr
    runs = [s for s in r.stdout.splitlines() if s.startswith("+ ")]
    start = next(s for s in runs if "nohup setsid" in s)
    assert "nohup setsid .venv/bin/python benchmarks/accelerator.py --batch-start 8 > " in start
    assert "llmcxr-jax" not in start and "--config.distributed" not in start
    assert any("benchmarks/results/accelerator.md" in s and "--worker=0" in s for s in runs)
    assert not Path("/tmp/bench-logs-dry").exists()
