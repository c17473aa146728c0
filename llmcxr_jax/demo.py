"""`llmcxr-jax demo` (what `make demo` runs): LLM-CXR end to end on the embedded phantoms.

Every step writes into `--out` (default `demo-out/`) and is skipped when its output is already
there, so an interrupted demo resumes where it stopped:

    vqgan/       the VQ-GAN run (clinical loss on; its classifier in vqgan/classifier)
    codes/       the codes of every phantom film (encode-images)
    tfds/        cxr_phantoms/64 with the codes (TFDS, array_record)
    stage1/      LM stage 1 (the tokenizer in stage1/tokenizer)
    stage2/      LM stage 2 from stage 1's weights; stage2/model is the final checkpoint
    eval/        results.json, results.md, samples.png, recon.png, reports.jsonl,
                 items.jsonl, items.csv (per test item), films/ (generated films)
    summary.md   the closing summary (also summary.json): time per step, the figures with
                 their 95% intervals, the controls, and PASS/FAIL against the demo's bars

`--minutes N` scales the same recipe to a time budget: the VQ-GAN and classifier steps grow in
proportion to N over the recipe's own minutes, and LM stage 1 gets `lm_share` of the budget, its
step count set by the step time measured at the start of that run (`train/lm.py`,
`time_budget_s`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import ml_collections

from llmcxr_jax import checkpoint, sharding
from llmcxr_jax.configs import load

log = logging.getLogger(__name__)


def config_dir() -> Path:
    """The project's config files: `configs/` at the top of the source tree, which an installed
    wheel carries as `llmcxr_jax/config_files` (setup.py)."""
    package = Path(__file__).resolve().parent
    installed = package / "config_files"
    return installed if installed.is_dir() else package.parent / "configs"


CONFIG_DIR = config_dir()


def _config(name: str, *overrides: str) -> ml_collections.ConfigDict:
    path, _, arg = name.partition(":")
    spec = str(CONFIG_DIR / path) + (f":{arg}" if arg else "")
    return load(spec, list(overrides))


def _banner(text: str) -> None:
    log.info(f"\n== {text}")


def cpu_name() -> str:
    """The CPU model as the kernel names it (timings mean little without it)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def scale_to_minutes(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The recipe for a `c.minutes` budget (see the module docstring); `c` if minutes is 0."""
    if not c.get("minutes"):
        return c
    c = ml_collections.ConfigDict(c.to_dict())
    factor = float(c.minutes) / float(c.recipe_minutes)
    vq_steps = max(1, round(c.vqgan_steps * factor))
    clf_steps = max(1, round(c.classifier_steps * factor))
    c.vqgan_steps, c.classifier_steps = vq_steps, clf_steps
    c.stage1_overrides = (
        *c.stage1_overrides,
        f"--config.time_budget_s={c.lm_share * c.minutes * 60:.0f}",
    )
    return c


def data_parallel_width(batch_sizes: list[int], wanted: int = 0) -> int:
    """Devices for the convolutional steps: `wanted`, or (0) the most local devices (at most 8)
    that divide every batch. `llmcxr-jax demo` asks for one CPU device per core."""
    import jax

    n = min(wanted or 8, jax.local_device_count())
    while n > 1 and any(b % n for b in batch_sizes):
        n -= 1
    return max(n, 1)


def run(
    out: str | os.PathLike = "demo-out",
    config: ml_collections.ConfigDict | None = None,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the demo in `out`; returns the evaluation results with step timings."""
    import tensorflow_datasets as tfds

    import llmcxr_jax.data.tfds  # noqa: F401  (registers the builders)
    from llmcxr_jax import encode
    from llmcxr_jax.data.image_sources import make_source
    from llmcxr_jax.data.records import open_records
    from llmcxr_jax.eval import evaluate as evaluation
    from llmcxr_jax.generate import Generator
    from llmcxr_jax.train import lm
    from llmcxr_jax.train import vqgan as train_vqgan

    c = scale_to_minutes(config or _config("demo_run.py"))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    # work done across every run in `out`: a resumed demo reports the whole recipe's time
    ledger_path = out / "timings.json"
    ledger: dict[str, float] = json.loads(ledger_path.read_text()) if ledger_path.exists() else {}
    runs_before = int(ledger.pop("_runs", 0))
    sizes = {
        "train_size": c.train_size,
        "validate_size": c.validate_size,
        "test_size": c.test_size,
    }
    ranges = tfds.builder("cxr_phantoms/64", **sizes).split_ranges()
    n_films = ranges["test"].stop

    def step(name: str, redone: bool = False) -> Any:
        """Times a step. A skipped or resumed step adds to the time its earlier runs recorded;
        a `redone` step (evaluation, which always runs whole) replaces it."""

        class _Timer:
            def __enter__(self) -> None:
                self.t = time.time()
                _banner(name)

            def __exit__(self, *exc: Any) -> None:
                timings[name] = time.time() - self.t
                before = 0.0 if redone else ledger.get(name, 0.0)
                ledger[name] = before + timings[name]
                tmp = out / ".timings.json.tmp"
                tmp.write_text(json.dumps({**ledger, "_runs": runs_before + 1}, indent=1))
                os.replace(tmp, ledger_path)
                if exc[0] is None:
                    log.info(f"   {name}: {timings[name]:.0f} s")

        return _Timer()

    vq_cfg = _config(
        c.vqgan_config,
        f"--config.data.source=phantoms:{len(ranges['train'])}",
        f"--config.seed={c.seed}",
        f"--config.steps={c.vqgan_steps}",
        f"--config.classifier.train_steps={c.classifier_steps}",
        *c.vqgan_overrides,
    )
    # the convolutional steps (VQ-GAN, classifier, encoding) run data parallel over the cores
    encode_batch = 16
    width = data_parallel_width(
        [vq_cfg.data.batch_size, vq_cfg.classifier.batch_size, encode_batch], c.get("devices", 0)
    )
    vq_cfg.mesh = (width, 1, 1)
    vq_dir = out / "vqgan"
    with step("1/6 VQ-GAN (clinical-information-preserving loss on)"):
        if checkpoint.workdir_model(vq_dir) is None:
            log.info(f"VQ-GAN and classifier data parallel over {width} device(s)")
            train_vqgan.train(vq_cfg, vq_dir, progress=progress)
    vq_model = checkpoint.model_dir(vq_dir)  # vqgan/model
    vq = checkpoint.load_model(vq_model, expect="vqgan")
    num_codes = vq.config.latent_size**2

    with step(f"2/6 encode {n_films} phantom films"):
        encode.encode_dataset(
            vq,
            make_source(f"phantoms:{n_films}", vq.config.resolution),
            out / "codes",
            batch_size=encode_batch,
            progress=progress,
            mesh=sharding.make_mesh((width, 1, 1)),
        )

    data_dir = out / "tfds"
    with step("3/6 cxr_phantoms/64 with codes (TFDS)"):
        b = tfds.builder(
            "cxr_phantoms/64",
            data_dir=str(data_dir),
            file_format="array_record",
            codes_dir=str(out / "codes"),
            **sizes,
        )
        if not b.is_prepared():
            b.download_and_prepare()

    def lm_config(name: str, overrides: Any) -> ml_collections.ConfigDict:
        cfg = _config(name, *overrides)
        cfg.data.data_dir = str(data_dir)
        cfg.data.builder_kwargs = dict(sizes)
        cfg.data.num_codes = num_codes
        cfg.data.num_image_codes = cfg.tokenizer.num_image_codes = vq.config.n_embed
        cfg.init.vqgan = str(vq_model)  # for init.image_embeddings="codebook"
        return cfg

    with step("4/6 LM stage 1 (tokenizer trained on the reports first)"):
        if checkpoint.workdir_model(out / "stage1") is None:
            cfg = lm_config(c.stage1_config, c.stage1_overrides)
            lm.train(cfg, out / "stage1", progress=progress)
    with step("5/6 LM stage 2 (from stage 1's weights, fresh optimizer)"):
        if checkpoint.workdir_model(out / "stage2") is None:
            cfg = lm_config(c.stage2_config, c.stage2_overrides)
            cfg.init.params_from = str(out / "stage1")
            cfg.tokenizer.path = str(out / "stage1" / "tokenizer")
            lm.train(cfg, out / "stage2", progress=progress)

    with step("6/6 generate and evaluate on the held-out test films", redone=True):
        gen = Generator.load(out / "stage2", vq_model, batch_size=c.eval.batch_size)
        classifier = checkpoint.load_model(vq_dir / "classifier", expect="densenet")
        records = open_records(
            ml_collections.ConfigDict(
                {
                    "builder": "cxr_phantoms",
                    "builder_config": "64",
                    "data_dir": str(data_dir),
                    "builder_kwargs": sizes,
                }
            ),
            "test",
        )
        from llmcxr_jax.decode import Sampler

        results = evaluation.evaluate(
            gen,
            records,
            out / "eval",
            classifier=classifier,
            stage=2,
            num_reports=c.eval.num_reports,
            num_images=c.eval.num_images,
            sampler=Sampler(top_p=c.eval.top_p),
            seed=c.seed,
            max_items=c.eval.max_items,
            vqa_questions=c.eval.vqa_questions,
            max_report_tokens=c.eval.max_report_tokens,
            title="ours (phantoms, test split)",
            progress=progress,
            bootstrap=c.eval.bootstrap,
        )
    results["timings_s"] = timings
    results["recipe_timings_s"] = {k: ledger[k] for k in timings}
    results["resumed"] = runs_before > 0
    results["summary"] = summarize(results, c, out)
    write_summary(results["summary"], out)
    log.info("\n" + (out / "summary.md").read_text())
    return results


# --------------------------------------------------------------------------------------------
# The closing summary
# --------------------------------------------------------------------------------------------


def _get(d: Any, *keys: str, default: Any = None) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def _with_ci(value: Any, ci: Any, fmt: str = "{:.3f}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = fmt.format(value)
    if ci and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci):
        text += " [" + ", ".join(fmt.format(x) for x in ci) + "]"
    return text


def headline_key(c: ml_collections.ConfigDict) -> str:
    """Which CXR-to-report score the bars are checked on (configs/demo_run.py says why)."""
    return "cxr_to_report_prob" if c.eval.get("headline") == "probability" else "cxr_to_report"


def summarize(results: dict[str, Any], c: ml_collections.ConfigDict, out: Path) -> dict[str, Any]:
    """Figures, controls and the bars of configs/demo_run.py, as rows of (what, value, bar, ok)."""
    bars = c.bars
    cpu = cpu_name()
    minutes_bar = bars.minutes_amd if "AMD" in cpu.upper() else bars.minutes
    if c.get("minutes"):
        minutes_bar = float(c.minutes)
    # the whole recipe's time, also when this run resumed an earlier one
    recipe = results.get("recipe_timings_s") or results["timings_s"]
    total_min = sum(recipe.values()) / 60
    what = "total time" + (" (over resumed runs)" if results.get("resumed") else "")
    rows: list[tuple[str, str, str, bool | None]] = [
        (what, f"{total_min:.1f} min", f"<= {minutes_bar:g} min", total_min <= minutes_bar)
    ]

    def info(what: str, value: Any, ci: Any, fmt: str = "{:.3f}") -> None:
        """A figure that is reported but has no bar."""
        rows.append((what, _with_ci(value, ci, fmt), "", None))

    def auroc_rows(name: str, key: str) -> None:
        r = results.get(key)
        if not r:
            rows.append((name, "n/a", "", False))
            return
        micro, ci = _get(r, "auroc", "micro"), _get(r, "auroc_ci95", "micro")
        ok = micro is not None and micro >= bars.auroc_micro
        ok_lo = bool(ci) and ci[0] >= bars.auroc_ci_low
        rows.append(
            (
                f"{name}: micro AUROC [95% CI]",
                _with_ci(micro, ci),
                f">= {bars.auroc_micro:g}, CI low >= {bars.auroc_ci_low:g}",
                ok and ok_lo,
            )
        )
        info(f"{name}: macro AUROC", _get(r, "auroc", "macro"), _get(r, "auroc_ci95", "macro"))
        mm = _get(r, "mismatched", "auroc", "micro")
        rows.append(
            (
                f"{name}, mismatched inputs (control): micro AUROC",
                _with_ci(mm, _get(r, "mismatched", "auroc_ci95", "micro")),
                f"<= {bars.control_max:g}",
                mm is not None and mm <= bars.control_max,
            )
        )

    head = headline_key(c)
    other = "cxr_to_report" if head == "cxr_to_report_prob" else "cxr_to_report_prob"
    label = {
        "cxr_to_report": f"CXR-to-report ({c.eval.num_reports} sampled reports)",
        "cxr_to_report_prob": "CXR-to-report (model's p(yes), deterministic)",
    }
    auroc_rows(label[head], head)
    if results.get(other):
        r = results[other]
        info(
            f"{label[other]}: micro AUROC",
            _get(r, "auroc", "micro"),
            _get(r, "auroc_ci95", "micro"),
        )
    em = _get(results, "cxr_to_report", "greedy_exact_match")
    if em is not None:
        ci = _get(results, "cxr_to_report", "greedy_exact_match_ci95")
        info("greedy reports: all six labels right", em, ci)
    auroc_rows(
        f"report-to-CXR (classifier on {c.eval.num_images} generated films)", "report_to_cxr"
    )
    rec = results.get("reconstruction") or {}
    psnr = rec.get("psnr")
    rows.append(
        (
            "VQ-GAN reconstruction PSNR (test films)",
            _with_ci(psnr, rec.get("psnr_ci95"), "{:.1f}") + " dB",
            f">= {bars.psnr_min:g} dB",
            psnr is not None and psnr >= bars.psnr_min,
        )
    )
    for avg in ("micro", "macro"):
        kept = _get(rec, "kept", avg)
        real = _get(rec, "real_films", "auroc", avg)
        recon = _get(rec, "reconstructions", "auroc", avg)
        value = "n/a" if kept is None else f"{kept:.3f} ({recon:.3f} / {real:.3f})"
        rows.append(
            (
                f"clinical information kept: classifier {avg} AUROC, reconstructions / real",
                value,
                f">= {bars.kept_min:g}",
                kept is not None and kept >= bars.kept_min,
            )
        )
    fid = _get(results, "report_to_cxr", "fid")
    if fid is not None:
        info("FID (classifier features)", fid, _get(results, "report_to_cxr", "fid_ci95"))
    vqa = results.get("vqa")
    if vqa:
        info("VQA accuracy", vqa["overall"], vqa.get("overall_ci95"))

    ev = out / "eval"
    paths = [
        (out / "summary.md", "this summary"),
        (ev / "results.md", "the evaluation's tables"),
        (ev / "samples.png", "real test films over films generated from their reports"),
        (ev / "recon.png", "real test films over their VQ-GAN reconstructions"),
        (ev / "reports.jsonl", "reference and generated reports"),
        (ev / "items.csv", "per test item: reports, labels, metrics, generated film paths"),
        (out / "vqgan" / "samples", "VQ-GAN training inputs over reconstructions"),
        (out / "stage1" / "samples", "LM samples during stage 1"),
        (out / "stage2" / "samples", "LM samples during stage 2"),
    ]
    checked = [r[3] for r in rows if r[3] is not None]
    return {
        "cpu": cpu,
        "devices": c.get("devices", 0),
        "seed": c.seed,
        "minutes": c.get("minutes", 0) or None,
        "timings_s": recipe,
        "resumed": bool(results.get("resumed")),
        "rows": [list(r) for r in rows],
        "passed": all(checked),
        "paths": [[str(p), what] for p, what in paths if p.exists() or p.name == "summary.md"],
        "tensorboard": f"tensorboard --logdir {out}",
        "serve": (
            f"llmcxr-jax serve --checkpoint {out / 'stage2'} "
            f"--vqgan {checkpoint.model_dir(out / 'vqgan')}"
        ),
    }


def summary_markdown(s: dict[str, Any]) -> str:
    lines = [
        f"# Demo summary: {'PASS' if s['passed'] else 'FAIL'} (seed {s['seed']}, {s['cpu']})",
        "",
        "time per step: "
        + ", ".join(f"{k.split()[0]} {v:.0f} s" for k, v in s["timings_s"].items()),
        "",
        "| figure | value [95% CI] | bar | |",
        "|---|---|---|---|",
    ]
    for what, value, bar, ok in s["rows"]:
        mark = "" if ok is None else ("PASS" if ok else "FAIL")
        lines.append(f"| {what} | {value} | {bar} | {mark} |")
    lines += ["", "outputs:"]
    lines += [f"- {p}: {what}" for p, what in s["paths"]]
    lines += [f"- TensorBoard: `{s['tensorboard']}`"]
    if s.get("serve"):  # summaries written before `serve` existed have none
        lines += [f"- try the model in a browser: `{s['serve']}`"]
    lines += [""]
    return "\n".join(lines)


def write_summary(s: dict[str, Any], out: Path) -> None:
    """summary.md and summary.json, each written to a temporary name and renamed."""
    for name, text in (
        ("summary.md", summary_markdown(s)),
        ("summary.json", json.dumps(s, indent=2)),
    ):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out / name)
