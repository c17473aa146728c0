"""`llmcxr-jax demo` (what `make demo` runs): LLM-CXR end to end on the embedded phantoms.

Every step writes into `--out` (default `demo-out/`) and is skipped when its output is already
there, so an interrupted demo resumes where it stopped:

    vqgan/       the VQ-GAN run (clinical loss on; its classifier in vqgan/classifier)
    codes/       the codes of every phantom film (encode-images)
    tfds/        cxr_phantoms/64 with the codes (TFDS, array_record)
    stage1/      LM stage 1 (the tokenizer in stage1/tokenizer)
    stage2/      LM stage 2 from stage 1's weights; stage2/model is the final checkpoint
    eval/        results.json, results.md, samples.png, reports.jsonl
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import ml_collections

from llmcxr_jax import checkpoint, sharding
from llmcxr_jax.configs import load

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def _config(name: str, *overrides: str) -> ml_collections.ConfigDict:
    path, _, arg = name.partition(":")
    spec = str(CONFIG_DIR / path) + (f":{arg}" if arg else "")
    return load(spec, list(overrides))


def _banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


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
    from llmcxr_jax.data import encode
    from llmcxr_jax.data.image_sources import make_source
    from llmcxr_jax.eval import evaluate as evaluation
    from llmcxr_jax.generate import Generator
    from llmcxr_jax.train import lm
    from llmcxr_jax.train import vqgan as train_vqgan

    c = config or _config("demo_run.py")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    sizes = {
        "train_size": c.train_size,
        "validate_size": c.validate_size,
        "test_size": c.test_size,
    }
    ranges = tfds.builder("cxr_phantoms/64", **sizes).split_ranges()
    n_films = ranges["test"].stop

    def step(name: str) -> Any:
        class _Timer:
            def __enter__(self) -> None:
                self.t = time.time()
                _banner(name)

            def __exit__(self, *exc: Any) -> None:
                timings[name] = time.time() - self.t
                if exc[0] is None:
                    print(f"   {name}: {timings[name]:.0f} s", flush=True)

        return _Timer()

    vq_cfg = _config(
        c.vqgan_config,
        f"--config.data.source=phantoms:{len(ranges['train'])}",
        f"--config.seed={c.seed}",
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
        if not (vq_dir / "model" / checkpoint.CONFIG_FILE).exists():
            print(f"VQ-GAN and classifier data parallel over {width} device(s)", flush=True)
            train_vqgan.train(vq_cfg, vq_dir, progress=progress)
    vq = checkpoint.load_model(vq_dir / "model", expect="vqgan")
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
        return cfg

    with step("4/6 LM stage 1 (tokenizer trained on the reports first)"):
        if not (out / "stage1" / "model" / checkpoint.CONFIG_FILE).exists():
            cfg = lm_config(c.stage1_config, c.stage1_overrides)
            lm.train(cfg, out / "stage1", progress=progress)
    with step("5/6 LM stage 2 (from stage 1's weights, fresh optimizer)"):
        if not (out / "stage2" / "model" / checkpoint.CONFIG_FILE).exists():
            cfg = lm_config(c.stage2_config, c.stage2_overrides)
            cfg.init.params_from = str(out / "stage1")
            cfg.tokenizer.path = str(out / "stage1" / "tokenizer")
            lm.train(cfg, out / "stage2", progress=progress)

    with step("6/6 generate and evaluate on the held-out test films"):
        gen = Generator.load(out / "stage2", vq_dir / "model", batch_size=c.eval.batch_size)
        classifier = checkpoint.load_model(vq_dir / "classifier", expect="densenet")
        records = lm.open_records(
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
        )
    results["timings_s"] = timings
    print("\n" + (out / "eval" / "results.md").read_text())
    total = sum(timings.values())
    print("time per step: " + ", ".join(f"{k.split()[0]} {v:.0f} s" for k, v in timings.items()))
    print(f"total {total / 60:.1f} min")
    c2r = results["cxr_to_report"]["auroc"]["micro"]
    r2c = results.get("report_to_cxr", {}).get("auroc", {}).get("micro", float("nan"))
    print(f"micro AUROC: CXR-to-report {c2r:.3f}, report-to-CXR {r2c:.3f} (target >= 0.75)")
    print(
        f"outputs: {out / 'eval' / 'results.md'}, {out / 'eval' / 'samples.png'} "
        f"(top: real test films; bottom: films generated from their reports), "
        f"{out / 'vqgan' / 'samples'}/, {out / 'stage2' / 'samples'}/; "
        f"TensorBoard: tensorboard --logdir {out}"
    )
    return results
