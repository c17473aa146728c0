"""What int8 costs in accuracy: the quantised CPU path (`cpu_int8`) against the fp32 JAX model.

On the demo's trained model (`make demo` writes it to demo-out/), over its held-out test films:

1. logits: teacher-forced along the fp32 model's greedy CXR-to-report and report-to-CXR
   generations, max |int8 - fp32| and that over the fp32 logits' max |value| (relative);
2. greedy tokens: the share of those positions where int8's argmax equals fp32's (same
   prefix), and the share where int8's own greedy generation equals fp32's (free-running:
   after a first difference each continues from its own tokens, so one near-tie early in a
   report changes every later position);
3. the demo's evaluation (`evaluate`, the demo's settings) run with each engine: AUROC micro of
   the deterministic p(yes) score (same inputs, no sampling: the clean comparison) and of the
   8-sample score (int8 samples with torch's random stream, so it also moves by sampling).

    python benchmarks/int8_accuracy.py [--demo-out demo-out] [--films 16] [--no-evaluate]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def _test_records(demo_out: Path):
    import ml_collections

    from llmcxr_jax import demo
    from llmcxr_jax.data.records import open_records

    c = demo._config("demo_run.py")
    sizes = {"train_size": c.train_size, "validate_size": c.validate_size, "test_size": c.test_size}
    data = ml_collections.ConfigDict(
        {
            "builder": "cxr_phantoms",
            "builder_config": "64",
            "data_dir": str(demo_out / "tfds"),
            "builder_kwargs": sizes,
        }
    )
    return c, open_records(data, "test")


def _teacher_forced(model, engine, prompts: list[np.ndarray], new: list[np.ndarray], lo_hi):
    """At every generated position of the fp32 sequences, both models fed the same tokens: max
    |int8 - fp32| logit, that over the fp32 max |logit|, and how often the argmaxes agree."""
    import jax.numpy as jnp

    lo, hi = lo_hi
    diffs, scales, agree = [], [], []
    for p, g in zip(prompts, new, strict=True):
        seq = np.concatenate([p, g[:-1]])[None].astype(np.int32)
        ref = np.asarray(model(jnp.asarray(seq))[0])[0, len(p) - 1 :, lo:hi]
        got = engine.logits(seq)[0, len(p) - 1 :, lo:hi]
        diffs.append(np.abs(ref - got).max())
        scales.append(np.abs(ref).max())
        agree.extend(ref.argmax(-1) == got.argmax(-1))
    rel = np.asarray(diffs) / np.asarray(scales)
    return float(np.max(diffs)), float(np.max(rel)), float(np.mean(agree))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo-out", default="demo-out")
    ap.add_argument("--films", type=int, default=16, help="test films for points 1 and 2")
    ap.add_argument("--no-evaluate", action="store_true", help="skip point 3")
    args = ap.parse_args()
    demo_out = Path(args.demo_out)
    if not (demo_out / "stage2").is_dir():
        sys.exit(f"error: {demo_out}/stage2: no trained demo model (run `make demo` first)")

    from timing import recorded

    from llmcxr_jax import checkpoint, decode
    from llmcxr_jax.data import instructions
    from llmcxr_jax.eval import evaluate as evaluation
    from llmcxr_jax.generate import Generator

    with recorded("int8_accuracy"):
        c, records = _test_records(demo_out)
        vq = checkpoint.model_dir(demo_out / "vqgan")
        fp32 = Generator.load(demo_out / "stage2", vq, batch_size=c.eval.batch_size)
        int8 = Generator.load(
            demo_out / "stage2", vq, batch_size=c.eval.batch_size, quantize="int8"
        )
        n = min(args.films, len(records))
        codes = [np.asarray(records[i]["codes"]) for i in range(n)]
        texts = [evaluation._record_text(records[i], 2) for i in range(n)]
        cfg = fp32.model.config
        print(
            f"demo model: {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
            f"{cfg.num_params() / 1e6:.1f} M parameters; {n} test films\n"
        )
        tok = fp32.tokenizer
        rows = []
        for task in ("CXR-to-report", "report-to-CXR"):
            if task == "CXR-to-report":
                prompts = [
                    fp32._ids(instructions.cxr_to_report_prompt(fp32.check_codes(x))) for x in codes
                ]
                kw = dict(
                    max_new_tokens=c.eval.max_report_tokens,
                    stop_tokens=[tok.end_id],
                    token_mask=fp32._text_mask,
                    pad_id=tok.pad_id,
                )
                lo_hi = (0, tok.image_range[0])
            else:
                begin = np.asarray([tok.image_begin_id], np.int32)
                prompts = [
                    np.concatenate([fp32._ids(instructions.report_to_cxr_prompt(t)), begin])
                    for t in texts
                ]
                kw = dict(max_new_tokens=fp32.num_codes, vocab_range=tok.image_range)
                lo_hi = tok.image_range
            same = total = 0
            news = []
            for p in prompts:
                a = decode.generate(fp32.model, p[None], sampler=decode.GREEDY, **kw)
                b = int8.model.generate(p[None], sampler=decode.GREEDY, **kw)
                la = int(a.lengths[0])
                ta, tb = np.asarray(a.tokens)[0, :la], b.tokens[0, :la]
                same += int((ta == tb).sum())
                total += la
                news.append(ta)
            figs = _teacher_forced(fp32.model, int8.model, prompts, news, lo_hi)
            rows.append((task, *figs, same / total, total))
        print(
            "| task | logits max abs | relative | greedy equal, same prefix | greedy equal, "
            "free-running | positions |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        for task, max_abs, rel, tf, eq, total in rows:
            print(f"| {task} | {max_abs:.4f} | {rel:.4f} | {tf:.3f} | {eq:.3f} | {total} |")

        if not args.no_evaluate:
            from llmcxr_jax.decode import Sampler

            clf = checkpoint.load_model(demo_out / "vqgan" / "classifier", expect="densenet")
            res = {}
            for name, gen in (("fp32", fp32), ("int8", int8)):
                t0 = time.perf_counter()
                res[name] = evaluation.evaluate(
                    gen,
                    records,
                    Path(args.demo_out) / f"eval-{name}",
                    classifier=clf,
                    stage=2,
                    num_reports=c.eval.num_reports,
                    num_images=c.eval.num_images,
                    sampler=Sampler(top_p=c.eval.top_p),
                    seed=c.seed,
                    vqa_questions=c.eval.vqa_questions,
                    max_report_tokens=c.eval.max_report_tokens,
                    progress=False,
                    bootstrap=0,
                )
                res[name]["seconds"] = time.perf_counter() - t0
            print("\n| figure (demo evaluation, test split) | fp32 | int8 | difference |")
            print("|---|---:|---:|---:|")
            for label, path in (
                ("CXR-to-report AUROC micro, p(yes)", ("cxr_to_report_prob", "auroc", "micro")),
                ("CXR-to-report AUROC micro, 8 sampled", ("cxr_to_report", "auroc", "micro")),
                ("report-to-CXR AUROC micro", ("report_to_cxr", "auroc", "micro")),
                ("VQA accuracy", ("vqa", "overall")),
                ("evaluation seconds", ("seconds",)),
            ):
                a, b = (_find(res[k], path) for k in ("fp32", "int8"))
                if a is None or b is None:
                    print(f"| {label} | {a} | {b} | |")
                    continue
                print(f"| {label} | {a:.3f} | {b:.3f} | {b - a:+.3f} |")


def _find(res: dict, path: tuple[str, ...]) -> float | None:
    """A figure in `evaluate`'s results by its keys (None where absent)."""
    x = res
    for k in path:
        if not isinstance(x, dict) or k not in x:
            return None
        x = x[k]
    return float(x)


if __name__ == "__main__":
    main()
