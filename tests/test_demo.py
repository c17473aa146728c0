"""`llmcxr-jax demo` end to end at the test sizes, and the Colab notebook run on its outputs.

The demo runs once for the module (about a minute and a half on a CPU); the other tests read
its output directory.
"""

import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llmcxr_jax import checkpoint, demo
from llmcxr_jax.data import images

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "evaluate_checkpoint.ipynb"
CONFIG = "demo_run.py:test"
STEPS = 6
PUBLISHED = [f"{m} (published, MIMIC-CXR)" for m in ("LLM-CXR", "UniXGen", "XrayGPT")]
NOTEBOOK_PARAMETERS = [
    *("REPO_URL", "CHECKPOINT", "VQGAN", "CLASSIFIER", "DATA_DIR", "DATASET", "BUILDER_KWARGS"),
    *("SPLIT", "IMAGE", "REPORT", "QUESTION", "SEED", "MAX_ITEMS", "OUT"),
    *("CHEXBERT", "BERT_TOKENIZER", "RADGRAPH", "BERTSCORE_MODEL", "XRV_WEIGHTS"),
]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    config = demo._config(CONFIG)
    results = demo.run(out, config, progress=False)
    return out, config, results


def _sizes(config):
    return {k: config[k] for k in ("train_size", "validate_size", "test_size")}


def _check_unit_or_nan(value, what):
    assert isinstance(value, float), f"{what}: {value!r}"
    assert math.isnan(value) or 0.0 <= value <= 1.0, f"{what}: {value}"


def test_demo_outputs(demo_run):
    out, _, returned = demo_run
    eval_dir = out / "eval"
    results = json.loads((eval_dir / "results.json").read_text())
    assert results["num_items"] > 0

    for task in ("cxr_to_report", "report_to_cxr"):
        auroc = results[task]["auroc"]
        for avg in ("micro", "macro", "weighted"):
            _check_unit_or_nan(auroc[avg], f"{task} AUROC {avg}")
        assert len(auroc["per_class"]) == 6
        for name, v in auroc["per_class"].items():
            _check_unit_or_nan(v, f"{task} AUROC {name}")
        for avg in ("micro", "macro", "weighted"):
            _check_unit_or_nan(results[task]["f1"][avg], f"{task} F1 {avg}")
    fid = results["report_to_cxr"]["fid"]
    assert math.isfinite(fid) and fid >= 0.0
    vqa = results["vqa"]
    assert vqa["count"] > 0
    _check_unit_or_nan(vqa["overall"], "VQA accuracy")

    md = (eval_dir / "results.md").read_text()
    for row in PUBLISHED:
        assert row in md
    assert "FID" in md and "VQA accuracy" in md

    # samples.png: up to 8 real films above the films generated from their reports
    r2c = results["report_to_cxr"]
    k = min(8, results["num_items"] - len(r2c["failures"]))
    res = checkpoint.load_config(out / "vqgan" / "model", expect="vqgan").resolution
    grid = images.image_grid(np.zeros((2 * k, res, res, 3), np.uint8), ncols=k)
    with Image.open(eval_dir / "samples.png") as im:
        assert im.format == "PNG"
        assert im.size == (grid.shape[1], grid.shape[0])

    timings = returned["timings_s"]
    assert len(timings) == STEPS
    assert [t.split()[0] for t in timings] == [f"{i}/{STEPS}" for i in range(1, STEPS + 1)]
    assert all(v >= 0 for v in timings.values())
    # the returned results are the ones written
    assert returned["cxr_to_report"]["auroc"]["micro"] == pytest.approx(
        results["cxr_to_report"]["auroc"]["micro"], nan_ok=True
    )


def test_demo_summary_names_the_cpu_checks_the_bars_and_its_paths_exist(demo_run):
    out, config, returned = demo_run
    s = returned["summary"]
    assert s == json.loads((out / "summary.json").read_text())
    assert s["cpu"] == demo.cpu_name() and s["cpu"]
    md = (out / "summary.md").read_text()
    assert md.startswith("# Demo summary: " + ("PASS" if s["passed"] else "FAIL"))
    assert s["cpu"] in md
    for p, _ in s["paths"]:
        assert Path(p).exists(), p
    assert not (out / "stage2" / "samples").exists() or any(
        p.endswith("stage2/samples") for p, _ in s["paths"]
    )
    # the one command that serves the model it trained: its paths are that model's
    assert f"`{s['serve']}`" in md
    from llmcxr_jax import cli

    served = cli.build_parser().parse_args(s["serve"].split()[1:])
    assert checkpoint.model_dir(served.checkpoint) == checkpoint.workdir_model(out / "stage2")
    assert checkpoint.load_config(served.vqgan, "vqgan")
    names = [r[0] for r in s["rows"]]
    assert any("mismatched" in n for n in names)
    assert any("PSNR" in n for n in names)
    checked = [r for r in s["rows"] if r[3] is not None]
    assert s["passed"] == all(r[3] for r in checked)
    # the tiny test demo learns nothing: the AUROC bar must be reported as missed
    c2r = [r for r in s["rows"] if r[0].startswith("CXR-to-report") and r[2]]
    assert c2r and c2r[0][3] is (returned["cxr_to_report"]["auroc"]["micro"] >= 0.8)


def test_scale_to_minutes_grows_the_steps_and_gives_the_lm_a_budget():
    c = demo._config("demo_run.py")
    assert demo.scale_to_minutes(c) is c  # minutes 0: the recipe as configured
    c.minutes = 30.0
    scaled = demo.scale_to_minutes(c)
    factor = 30.0 / c.recipe_minutes
    assert scaled.vqgan_steps == round(c.vqgan_steps * factor)
    assert scaled.classifier_steps == round(c.classifier_steps * factor)
    want = f"--config.time_budget_s={c.lm_share * 30 * 60:.0f}"
    assert scaled.stage1_overrides[-1] == want
    assert c.vqgan_steps == 300  # the input config is left alone


def test_demo_runs_the_convolutional_steps_data_parallel(demo_run):
    out, config, _ = demo_run
    saved = json.loads((out / "vqgan" / "config.json").read_text())
    assert config.devices == 2 and tuple(saved["mesh"]) == (2, 1, 1)
    assert saved["data"]["cache_in_memory"] is True


@pytest.mark.parametrize(
    "user_flags, keep_users, want", [("", True, 3), ("5", True, 5), ("5", False, 3)]
)
def test_cli_requests_host_devices_before_jax_starts(user_flags, keep_users, want):
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    if user_flags:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={user_flags}"
    code = (
        "from llmcxr_jax import cli\n"
        f"cli.request_host_devices(3, keep_users={keep_users})\n"
        "import jax\n"
        "print(jax.local_device_count())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == str(want)


def test_data_parallel_width_divides_every_batch():
    import jax

    n = jax.local_device_count()  # 8 fake CPU devices in the test suite
    assert demo.data_parallel_width([16, 16]) == min(n, 8)
    assert demo.data_parallel_width([16, 12]) == 4
    assert demo.data_parallel_width([16, 6]) == 2
    assert demo.data_parallel_width([15]) == 5
    assert demo.data_parallel_width([7]) == 7
    assert demo.data_parallel_width([16], wanted=3) == 2
    assert demo.data_parallel_width([16], wanted=64) == min(n, 8)
    assert demo.data_parallel_width([9], wanted=2) == 1


def test_demo_rerun_skips_training_and_repeats_results(demo_run):
    out, config, first = demo_run
    before = (out / "eval" / "results.json").read_text()
    t = time.time()
    again = demo.run(out, config, progress=False)
    elapsed = time.time() - t
    timings = again["timings_s"]
    assert len(timings) == STEPS
    slow = {k: v for k, v in list(timings.items())[: STEPS - 1] if v > 5.0}
    assert not slow, f"steps that should have been skipped took long: {slow}"
    assert elapsed < 120, elapsed
    # the summary still reports the whole recipe's time: skipped steps keep what the first
    # run measured, and the evaluation (run again in full) counts once
    assert again["resumed"] and not first["resumed"]
    recipe = again["recipe_timings_s"]
    names = list(timings)
    for name in names[: STEPS - 1]:
        assert recipe[name] == pytest.approx(first["timings_s"][name] + timings[name])
    assert recipe[names[-1]] == pytest.approx(timings[names[-1]])
    assert again["summary"]["timings_s"] == recipe and again["summary"]["resumed"]
    assert any("over resumed runs" in r[0] for r in again["summary"]["rows"])
    # generation is seeded: the same metrics (the whole file, in fact) come out again
    assert (out / "eval" / "results.json").read_text() == before


def test_notebook_is_committed_clean():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "clear the outputs"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    names = {line.split("=")[0].strip() for line in tagged[0].source.splitlines() if "=" in line}
    assert set(NOTEBOOK_PARAMETERS) <= names
    assert any('"google.colab" in sys.modules' in c.source for c in code)


def _outputs(nb):
    """(all stdout text, all display/result data bundles) of an executed notebook."""
    stdout, bundles = [], []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.output_type == "stream" and o.name == "stdout":
                stdout.append(o.text)
            elif o.output_type in ("display_data", "execute_result"):
                bundles.append(o.data)
    return "".join(stdout), bundles


def test_notebook_runs_on_demo_outputs(demo_run, tmp_path, monkeypatch):
    import nbclient
    import nbformat

    from llmcxr_jax.data.image_sources import make_source

    out, config, _ = demo_run
    film = make_source("phantoms:1", 64)[0]["image"]
    image = tmp_path / "film.png"
    images.save_png(film, image)
    nb_out = tmp_path / "nb-out"
    overrides = {
        "CHECKPOINT": str(out / "stage2"),
        "VQGAN": str(out / "vqgan" / "model"),
        "CLASSIFIER": str(out / "vqgan" / "classifier"),
        "DATA_DIR": str(out / "tfds"),
        "BUILDER_KWARGS": _sizes(config),
        "IMAGE": str(image),
        "MAX_ITEMS": 4,
        "OUT": str(nb_out),
    }

    nb = nbformat.read(NOTEBOOK, as_version=4)
    (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    params.source += "\n\n# test values\n" + "".join(f"{k} = {v!r}\n" for k, v in overrides.items())
    # which interpreter the kernel runs: it must be this environment's
    probe = 'import sys\nprint("KERNEL_PREFIX=" + sys.prefix)'
    nb.cells.insert(0, nbformat.v4.new_code_cell(probe))

    # the kernel inherits the environment: JAX on the CPU, without the suite's 8 fake devices
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    flags = os.environ.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "")
    monkeypatch.setenv("XLA_FLAGS", flags.strip())
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()

    stdout, bundles = _outputs(nb)
    assert f"KERNEL_PREFIX={sys.prefix}\n" in stdout

    # CXR-to-report, report-to-CXR and VQA on the given film
    summary = json.loads((nb_out / "generated.json").read_text())
    assert summary["image"] == str(image)
    assert "Generated report:\n" + summary["report"] in stdout
    assert f"A: {summary['answer']}" in stdout
    png = Path(summary["generated_png"])
    assert png.parent == nb_out
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (64, 64)
    assert sum("image/png" in b for b in bundles) >= 4  # input, reconstruction, generated, samples

    # the evaluation table
    tables = [b["text/markdown"] for b in bundles if "text/markdown" in b]
    assert any("AUROC" in t for t in tables)
    assert all(row in tables[0] for row in PUBLISHED)
    assert "AUROC" in stdout or any("image/png" in b for b in bundles[-2:])  # table or chart
    results = json.loads((nb_out / "eval" / "results.json").read_text())
    assert 0 < results["num_items"] <= 4
    assert (nb_out / "eval" / "samples.png").exists()
    # no weights given: the model-based metrics are skipped with their reasons; per-item outputs
    assert "chexbert: skipped (no CheXbert weights given" in stdout
    assert "xrv FID: skipped (no XRV_WEIGHTS)" in stdout
    assert "### Report generation" in tables[0] and "—" in tables[0]
    with open(nb_out / "eval" / "items.csv", newline="", encoding="utf-8") as f:
        n_items = sum(1 for _ in csv.DictReader(f))
    assert n_items == results["num_items"] and f"items.csv: {n_items} items" in stdout


def test_lm_step_budget_is_measured_kept_for_resume_and_restores_the_data(tmp_path):
    import jax.numpy as jnp
    import ml_collections

    from llmcxr_jax.train import lm

    class Batches:  # the data iterator protocol lm.train uses
        def __init__(self):
            self.pos = 0

        def get_state(self):
            return {"pos": self.pos}

        def set_state(self, s):
            self.pos = s["pos"]

        def next(self):
            self.pos += 1
            return {"tokens": jnp.ones((2,))}

    calls = []

    def step_fn(state, batch, rng):
        calls.append(time.time())
        time.sleep(0.05)
        return state, {"loss": jnp.zeros(())}

    config = ml_collections.ConfigDict({"time_budget_s": 10.0, "optim": {"warmup_steps": 3}})
    batches = Batches()
    steps = lm._steps_for_budget(
        config, tmp_path, step_fn, {"w": jnp.ones(3)}, batches, time.time()
    )
    assert batches.pos == 0  # the probe's batch is given back
    assert len(calls) == 4  # one compiling call, then three timed
    # ~0.05 s a step, ~10 s minus the time spent and the compile counted again, 95% of it
    assert 120 <= steps <= 0.95 * 10.0 / 0.05
    saved = json.loads((tmp_path / lm.BUDGET_FILE).read_text())
    assert saved["steps"] == steps and saved["step_s"] >= 0.05
    # a resumed run keeps its schedule without measuring again
    again = lm._steps_for_budget(config, tmp_path, step_fn, {"w": jnp.ones(3)}, batches, 0.0)
    assert again == steps and len(calls) == 4
    # a budget smaller than the warm-up still trains past it
    config.time_budget_s = 0.01
    (tmp_path / "short").mkdir()
    short = lm._steps_for_budget(
        config, tmp_path / "short", step_fn, {"w": jnp.ones(3)}, batches, time.time()
    )
    assert short == 4
