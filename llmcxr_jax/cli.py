"""The `llmcxr-jax` command: one console script, a subcommand per job."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmcxr_jax.sharding import request_host_devices  # imports no JAX: usable before it starts


def _import_hf(args: argparse.Namespace) -> None:
    from llmcxr_jax import checkpoint
    from llmcxr_jax.convert import hf_gpt_neox
    from llmcxr_jax.models.gpt_neox import resize_vocab_params

    config, params = hf_gpt_neox.import_hf(
        args.hf_dir,
        vocab_pad_multiple=args.vocab_pad_multiple,
        param_dtype=args.param_dtype,
        progress=True,
    )
    note = ""
    if args.vocab_size and args.vocab_size != config.vocab_size:
        old = config.vocab_size
        config, params = resize_vocab_params(
            config, params, args.vocab_size, pad_multiple=args.vocab_pad_multiple, rng=args.seed
        )
        note = f", vocabulary grown {old} -> {config.vocab_size} (new rows N(0, 0.02))"
    checkpoint.save_params(args.out, config, params, overwrite=args.overwrite)
    print(
        f"import-hf: {args.hf_dir} -> {args.out}: {config.num_params() / 1e9:.3f} B parameters"
        f", tables padded to {config.padded_vocab_size} rows{note}"
    )


def _export_hf(args: argparse.Namespace) -> None:
    from llmcxr_jax import checkpoint
    from llmcxr_jax.convert import hf_gpt_neox
    from llmcxr_jax.models.gpt_neox import params_of

    model = checkpoint.load_model(args.checkpoint)
    out = hf_gpt_neox.export_hf(model.config, params_of(model), args.out, dtype=args.dtype)
    print(f"export-hf: {args.checkpoint} -> {out} ({model.config.vocab_size} tokens, {args.dtype})")


def _import_taming(args: argparse.Namespace) -> None:
    from llmcxr_jax import checkpoint
    from llmcxr_jax.convert import taming

    config, params, skipped = taming.import_taming(args.ckpt, args.config)
    checkpoint.save_params(args.out, config, params, overwrite=args.overwrite)
    note = ""
    if skipped:
        note = (
            f"; ignored {len(skipped)} loss.* tensors (LPIPS and discriminator: "
            "train-vqgan --config.init.taming_ckpt ports them)"
        )
    print(
        f"import-taming: {args.ckpt} -> {args.out}: {config.resolution}px, "
        f"{config.num_codes} codes per image, codebook {config.n_embed}x{config.embed_dim}{note}"
    )


def _export_taming(args: argparse.Namespace) -> None:
    from llmcxr_jax import checkpoint
    from llmcxr_jax.convert import taming
    from llmcxr_jax.models import common

    model = checkpoint.load_model(args.checkpoint, expect="vqgan")
    ckpt, yml = taming.export_taming(model.config, common.variables_of(model), args.out)
    print(f"export-taming: {args.checkpoint} -> {ckpt} and {yml}")


def _encode_images(args: argparse.Namespace) -> None:
    from llmcxr_jax import checkpoint, encode
    from llmcxr_jax.data import image_sources

    model = checkpoint.load_model(args.checkpoint, expect="vqgan")
    source = image_sources.make_source(args.source, model.config.resolution)
    report = encode.encode_dataset(
        model,
        source,
        args.out,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        provenance={"checkpoint": str(args.checkpoint), "source": args.source},
    )
    print(
        f"encode-images: {report.records} images encoded into {args.out} "
        f"({report.shards_written} shards written, {report.shards_skipped} already done)"
        + (
            f"; {report.errors} unreadable, listed in {args.out}/errors-*.jsonl"
            if report.errors
            else ""
        )
    )


def _train_vqgan(args: argparse.Namespace) -> None:
    from llmcxr_jax import configs
    from llmcxr_jax.train import vqgan

    config = configs.load(args.config, args.overrides)
    metrics = vqgan.train(config, args.workdir)
    print(f"train-vqgan: {args.workdir}: {vqgan.summary(metrics)}")


def _train(args: argparse.Namespace) -> None:
    from llmcxr_jax import configs
    from llmcxr_jax.train import lm

    config = configs.load(args.config, args.overrides)
    metrics = lm.train(config, args.workdir)
    shown = {k: round(v, 4) for k, v in metrics.items() if k in ("loss_avg", "eval_loss", "step")}
    print(f"train: {args.workdir}: {shown}")


def _plan(args: argparse.Namespace) -> None:
    import math

    meshes = [tuple(int(x) for x in m.split(",")) for m in (args.mesh or [])]
    ladder = [(1, c, 1) for c in (1, 2, 4, 8)]  # FSDP over 1..8 chips: where does it start to fit?
    meshes = list(dict.fromkeys(meshes + ladder))
    request_host_devices(max(math.prod(m) for m in meshes))
    from llmcxr_jax import configs
    from llmcxr_jax.train import plan

    config = configs.load(args.config, args.overrides)
    plans = []
    for m in meshes:
        p = plan.plan(config, m)
        hand_p, hand_o = plan.hand_bytes(config, m)
        for what, got, want in (
            ("parameter", p.params_bytes, hand_p),
            ("optimizer", p.opt_bytes, hand_o),
        ):
            if abs(got - want) > 0.01 * want:
                print(f"warning: {what} bytes {got:.3e} differ from the hand count {want:.3e}")
        plans.append(p)
    print(
        f"plan: {config.model}, max_len {config.data.max_len}, global batch "
        f"{config.data.batch_size}, remat {config.model_overrides.get('remat_policy')}, "
        f"micro-batches {config.loss.micro_batches}; XLA memory analysis per chip "
        f"(compiled for {jax_backend()})\n"
    )
    print(plan.format_plan(plans, args.hbm_gib))
    fitting = [p for p in plans if p.fits(args.hbm_gib)]
    too_big = [p.mesh for p in plans if not p.fits(args.hbm_gib)]
    if too_big:
        print(f"\ndo not fit {args.hbm_gib:.0f} GiB: {', '.join(map(str, too_big))}")
    if fitting:
        best = min(fitting, key=lambda p: (math.prod(p.mesh), p.total_bytes))
        print(
            f"smallest fitting mesh: {best.mesh} ({math.prod(best.mesh)} chips, "
            f"{best.total_bytes / plan.GIB:.1f} GiB per chip)"
        )
    else:
        print("nothing fits: raise micro_batches, use remat_policy=full, or more chips")


def jax_backend() -> str:
    import jax

    return jax.default_backend()


def builder_kwargs(items: Sequence[str] | None) -> dict[str, Any]:
    """`--builder-kwarg KEY=VALUE` arguments as a dict; a value is a Python literal (number,
    boolean, tuple, ...) where it parses as one, else the plain string."""
    import ast

    kwargs: dict[str, Any] = {}
    for item in items or []:
        key, _, value = item.partition("=")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return kwargs


def _prepare_data(args: argparse.Namespace) -> None:
    import tensorflow_datasets as tfds

    import llmcxr_jax.data.tfds as builders

    kwargs = builder_kwargs(args.builder_kwarg)
    if args.codes_dir:
        kwargs["codes_dir"] = args.codes_dir
    builder = tfds.builder(
        args.builder, data_dir=args.data_dir, file_format="array_record", **kwargs
    )
    config = tfds.download.DownloadConfig(manual_dir=args.manual_dir) if args.manual_dir else None
    builder.download_and_prepare(download_config=config)
    counts = {s: builder.info.splits[s].num_examples for s in builder.info.splits}
    print(
        f"prepare-data: {args.builder} in {builder.data_dir}: {counts}; "
        f"skipped {builders.skip_counts(builder)}"
    )


def _generate(args: argparse.Namespace) -> None:
    """One line per result on stdout, one `error: ITEM: PROBLEM` line per bad input on stderr;
    the good inputs complete, and the exit status is 1 when any failed."""
    from llmcxr_jax import decode
    from llmcxr_jax.generate import Generator, Results

    gen = Generator.load(
        args.checkpoint, args.vqgan, tokenizer=args.tokenizer, batch_size=args.batch_size
    )
    if args.greedy:
        sampler = decode.GREEDY
    else:
        sampler = decode.Sampler(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)

    def inputs() -> tuple[list[Any], list[str], Results | None]:
        if args.codes:
            codes = np.load(args.codes, allow_pickle=False)
            return list(codes), [f"{args.codes}[{i}]" for i in range(len(codes))], None
        if not args.images:
            raise ValueError("give --images FILE... or --codes FILE.npy")
        enc = gen.encode_files(args.images, allow_upscale=args.allow_upscale)
        return enc.values, [str(p) for p in args.images], enc

    rows: list[dict[str, Any]] = []
    common = dict(seed=args.seed, progress=True)
    if args.task == "image":
        reports = list(args.report or [])
        if args.reports_file:
            reports += Path(args.reports_file).read_text(encoding="utf-8").splitlines()
        if not reports:
            raise ValueError("give --report TEXT (repeatable) or --reports-file FILE")
        names = [f"report {i}" for i in range(len(reports))]
        res = gen.images(reports, sampler=sampler, names=names, **common)
        good = res.ok
        if out and good:
            np.save(out / "codes.npy", np.stack([res.values[i] for i in good]))
        if good and gen.vqgan is not None:
            from llmcxr_jax.data.images import save_png

            pixels = gen.decode(np.stack([res.values[i] for i in good]))
            for j, i in enumerate(good):
                if out:
                    save_png(pixels[j], out / f"image_{i:04d}.png")
        for i, r in enumerate(reports):
            png = str(out / f"image_{i:04d}.png") if out and i in good else None
            rows.append({"input": r, "png": png})
    else:
        values, names, enc = inputs()
        if args.task == "report":
            res = gen.reports(
                values,
                sampler=sampler,
                names=names,
                num_samples=args.num_samples,
                max_new_tokens=args.max_new_tokens,
                **common,
            )
            key = "report"
        else:
            questions = list(args.question or [])
            if len(questions) == 1:
                questions *= len(values)
            if len(questions) != len(values):
                raise ValueError(f"{len(questions)} questions for {len(values)} images")
            res = gen.answers(
                values,
                questions,
                sampler=sampler,
                names=names,
                max_new_tokens=min(args.max_new_tokens, 48),
                **common,
            )
            key = "answer"
        if enc is not None:  # images that could not be read come first in the failures
            res.failures = sorted(enc.failures + res.failures, key=lambda f: f.index)
        for i, name in enumerate(names):
            rows.append({"input": name, key: res.values[i]})
            if args.task == "vqa":
                rows[-1]["question"] = questions[i]
    failed = {f.index: f for f in res.failures}
    for i, row in enumerate(rows):
        if i in failed:
            row["error"] = failed[i].message
            print(f"error: {failed[i]}", file=sys.stderr)
        elif args.task == "image":
            print(f"{row['input']!r} -> {row['png'] or 'codes'}")
        elif args.task == "report":
            print(f"{row['input']}: {row['report']}")
        else:
            print(f"{row['input']}: {row['question']} -> {row['answer']}")
    if out:
        name = {"report": "reports", "image": "images", "vqa": "answers"}[args.task]
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, default=_jsonable) + "\n")
    if failed:
        print(f"generate: {len(failed)} of {len(rows)} inputs failed", file=sys.stderr)
        raise SystemExit(1)


def _jsonable(x: Any) -> Any:
    return x.tolist() if isinstance(x, np.ndarray) else str(x)


def _demo(args: argparse.Namespace) -> None:
    import os

    # One CPU device per core: the convolutional steps then run data parallel over the cores
    # (XLA's CPU client keeps most of one program's convolution work on one thread).
    request_host_devices(min(len(os.sched_getaffinity(0)), 8), keep_users=True)
    from llmcxr_jax import demo

    config = demo._config(args.config, *args.overrides)
    if args.minutes:
        config.minutes = float(args.minutes)
    demo.run(args.out, config, progress=not args.no_progress)


def _evaluate(args: argparse.Namespace) -> None:
    import ml_collections

    from llmcxr_jax import checkpoint, decode
    from llmcxr_jax.data.records import open_records
    from llmcxr_jax.eval import evaluate as evaluation
    from llmcxr_jax.generate import Generator

    gen = Generator.load(
        args.checkpoint, args.vqgan, tokenizer=args.tokenizer, batch_size=args.batch_size
    )
    clf = checkpoint.load_model(args.classifier, expect="densenet") if args.classifier else None
    name, _, variant = args.dataset.partition("/")
    data = ml_collections.ConfigDict(
        {
            "builder": name,
            "builder_config": variant,
            "data_dir": args.data_dir,
            "builder_kwargs": builder_kwargs(args.builder_kwarg),
        }
    )
    records = open_records(data, args.split)
    evaluation.evaluate(
        gen,
        records,
        args.out,
        classifier=clf,
        stage=args.stage,
        num_reports=args.num_reports,
        num_images=args.num_images,
        sampler=decode.Sampler(top_p=args.top_p),
        seed=args.seed,
        max_items=args.max_items,
        vqa_questions=args.vqa_questions,
        max_report_tokens=args.max_new_tokens,
        uncertain_positive=args.uncertain_positive,
        bootstrap=args.bootstrap,
        probability_score=not args.no_probability_score,
    )
    print(Path(args.out, "results.md").read_text())
    print(f"evaluate: results.json, results.md, samples.png in {args.out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmcxr-jax",
        description="LLM-CXR in JAX: a multimodal chest X-ray LLM trained on TPUs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("import-hf", help="GPT-NeoX weights from a Hugging Face directory")
    p.add_argument("--hf-dir", required=True, help="directory with config.json and weights")
    p.add_argument("--out", required=True, help="model checkpoint directory to write")
    p.add_argument(
        "--vocab-size",
        type=int,
        default=0,
        help="grow the vocabulary to this many tokens (LLM-CXR: 51305)",
    )
    p.add_argument(
        "--vocab-pad-multiple",
        type=int,
        default=128,
        help="pad embedding tables to a multiple of this (masked, dropped on export)",
    )
    p.add_argument("--param-dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--seed", type=int, default=0, help="seed for new vocabulary rows")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_import_hf)

    p = sub.add_parser("export-hf", help="GPT-NeoX weights to a Hugging Face directory")
    p.add_argument("--checkpoint", required=True, help="model checkpoint directory")
    p.add_argument("--out", required=True, help="directory for config.json + safetensors")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.set_defaults(func=_export_hf)

    p = sub.add_parser("import-taming", help="VQ-GAN weights from a taming-transformers .ckpt")
    p.add_argument("--ckpt", required=True, help="taming / Lightning checkpoint (.ckpt)")
    p.add_argument("--config", required=True, help="taming's YAML config for it")
    p.add_argument("--out", required=True, help="model checkpoint directory to write")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_import_taming)

    p = sub.add_parser("export-taming", help="VQ-GAN weights to a taming-transformers .ckpt")
    p.add_argument("--checkpoint", required=True, help="VQ-GAN model checkpoint directory")
    p.add_argument("--out", required=True, help=".ckpt file to write (a .yaml goes beside it)")
    p.set_defaults(func=_export_taming)

    p = sub.add_parser("encode-images", help="pre-tokenise a data set's images into codes")
    p.add_argument("--checkpoint", required=True, help="VQ-GAN model checkpoint directory")
    p.add_argument("--source", required=True, help="folder:DIR or synthetic:N")
    p.add_argument("--out", required=True, help="directory for the code shards")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--shard-size", type=int, default=1024)
    p.set_defaults(func=_encode_images)

    p = sub.add_parser(
        "train-vqgan",
        help="train (or resume) a VQ-GAN with the clinical-information-preserving loss",
        description="Extra --config.key=value arguments override fields of the config file.",
    )
    p.add_argument("--config", required=True, help="configs/vqgan_*.py[:arg]")
    p.add_argument("--workdir", required=True, help="where checkpoints, metrics and samples go")
    p.set_defaults(func=_train_vqgan, takes_overrides=True)

    p = sub.add_parser(
        "train",
        help="LM finetuning (stage 1 or 2 by config); resumes from --workdir",
        description="Extra --config.key=value arguments override fields of the config file.",
    )
    p.add_argument("--config", required=True, help="configs/llmcxr_stage1.py, ..., demo.py")
    p.add_argument("--workdir", required=True)
    p.set_defaults(func=_train, takes_overrides=True)

    p = sub.add_parser(
        "plan",
        help="compile the real-size train step on fake devices: memory per chip, FLOPs",
        description="Extra --config.key=value arguments override fields of the config file.",
    )
    p.add_argument("--config", required=True)
    p.add_argument(
        "--mesh",
        action="append",
        metavar="DATA,FSDP,TENSOR",
        help="mesh shapes to try (repeatable); FSDP over 1-8 chips is always tried",
    )
    p.add_argument("--hbm-gib", type=float, default=32.0, help="memory per chip (TPU v4: 32)")
    p.set_defaults(func=_plan, takes_overrides=True)

    p = sub.add_parser("generate", help="reports from CXRs, CXRs from reports, VQA answers")
    p.add_argument("task", choices=["report", "image", "vqa"])
    p.add_argument("--checkpoint", required=True, help="LM checkpoint (or training workdir)")
    p.add_argument("--vqgan", help="VQ-GAN checkpoint: needed for image files and PNG output")
    p.add_argument("--tokenizer", help="tokenizer dir (default: CHECKPOINT/tokenizer)")
    p.add_argument("--images", nargs="+", help="JPEG/PNG/DICOM files (report, vqa)")
    p.add_argument("--codes", help=".npy int array [N, h*w] of pre-computed codes (report, vqa)")
    p.add_argument("--allow-upscale", action="store_true", help="upscale small images")
    p.add_argument("--report", action="append", help="report text (image; repeatable)")
    p.add_argument("--reports-file", help="one report per line (image)")
    p.add_argument("--question", action="append", help="question (vqa; one, or one per image)")
    p.add_argument("--out", help="directory for PNGs, codes.npy and a JSONL of the results")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--greedy", action="store_true", help="greedy instead of sampling")
    p.add_argument("--top-p", type=float, default=0.92, help="nucleus mass (LLM-CXR: 0.92)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--num-samples", type=int, default=1, help="reports per image (report)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="text length cap")
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=_generate)

    p = sub.add_parser("evaluate", help="the paper's evaluation tables for a checkpoint")
    p.add_argument("--checkpoint", required=True, help="LM checkpoint (or training workdir)")
    p.add_argument("--vqgan", help="VQ-GAN checkpoint (report-to-CXR needs it)")
    p.add_argument("--classifier", help="CXR classifier checkpoint (report-to-CXR, FID)")
    p.add_argument("--tokenizer", help="tokenizer dir (default: CHECKPOINT/tokenizer)")
    p.add_argument("--dataset", required=True, help="e.g. cxr_phantoms/64, mimic_cxr_jpg/paths")
    p.add_argument("--data-dir", default="", help="TFDS data dir of the prepared data set")
    p.add_argument("--builder-kwarg", action="append", metavar="KEY=VALUE")
    p.add_argument("--split", default="test")
    p.add_argument("--stage", type=int, default=2, help="which report text the model learned")
    p.add_argument("--num-reports", type=int, default=4, help="sampled reports per image")
    p.add_argument("--num-images", type=int, default=1, help="generated films per report")
    p.add_argument("--vqa-questions", type=int, default=2, help="per image (0: no VQA)")
    p.add_argument("--uncertain-positive", action="store_true", help="count uncertain as 1")
    p.add_argument("--max-new-tokens", type=int, default=256, help="report length cap")
    p.add_argument("--top-p", type=float, default=0.92)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-items", type=int, default=0, help="0: the whole split")
    p.add_argument(
        "--bootstrap", type=int, default=1000, help="resamples for the 95%% intervals (0: none)"
    )
    p.add_argument(
        "--no-probability-score",
        action="store_true",
        help="skip the deterministic p(yes) CXR-to-report score",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", required=True, help="directory for the JSON, Markdown and PNG")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("demo", help="the whole recipe on the embedded phantoms, on a CPU")
    p.add_argument("--out", default="demo-out", help="output directory (resumable)")
    p.add_argument("--config", default="demo_run.py", help="configs/ file[:arg]")
    p.add_argument(
        "--minutes",
        type=float,
        default=0.0,
        help="scale the recipe to this time budget (0: the 10-minute recipe as configured)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_demo, takes_overrides=True)

    p = sub.add_parser("prepare-data", help="build a TFDS data set (array_record, no TensorFlow)")
    p.add_argument(
        "--builder",
        required=True,
        help="cxr_phantoms[/64|/256], mimic_cxr_jpg[/paths|/images256], open_i[/...]",
    )
    p.add_argument("--data-dir", required=True, help="where TFDS writes the prepared data")
    p.add_argument("--manual-dir", help="the downloaded files (MIMIC-CXR-JPG tree, NLMCXR tgz)")
    p.add_argument("--codes-dir", help="codes from encode-images, joined by image id")
    p.add_argument(
        "--builder-kwarg",
        action="append",
        metavar="KEY=VALUE",
        help="e.g. train_size=500, reports_dir=/data/mimic-cxr-reports",
    )
    p.set_defaults(func=_prepare_data)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "takes_overrides", False):
        bad = [a for a in extra if not a.startswith("--config.")]
        if bad:
            parser.error(f"unrecognized arguments: {' '.join(bad)}")
        args.overrides = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except (ValueError, KeyError, TypeError, FileExistsError, FileNotFoundError, RuntimeError) as e:
        # Bad input is the user's to fix: one line naming the file and the problem.
        print(f"llmcxr-jax {args.command}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
