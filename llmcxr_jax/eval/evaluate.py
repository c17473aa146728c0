"""The paper's evaluation of a checkpoint on a prepared data set's split.

    llmcxr-jax evaluate --checkpoint run/stage2 --vqgan run/vqgan/model \\
        --classifier run/vqgan/classifier --dataset cxr_phantoms/64 --data-dir DIR --split test

Writes `results.json`, `results.md` (the tables, the paper's published rows beside ours) and
`samples.png` (real films above the films generated from their reports) to `--out`.

How the numbers are formed (the original never said; these are our definitions):

- References: each test record's report text for the model's stage (stage 2: IMPRESSION;
  stage 1: FINDINGS + IMPRESSION) is labelled by our CheXpert-style labeler
  (`data/labeler.py`), and the 14 observations are reduced to the paper's six classes
  (Consolidation/Pneumonia merged). Positive = 1; negative, absent and, by default, uncertain
  = 0 (`uncertain_positive=True` counts "uncertain" as positive, CheXpert's U-Ones).
- CXR-to-report: for each test image, `k` reports are sampled (top-p 0.92, LLM-CXR's
  setting), each labelled the same way. AUROC score of class c = the fraction of the k reports
  that state c (k = 1 gives a 0/1 score). F1 prediction = that fraction is at least 0.5.
- Report-to-CXR: for each test report, `k` films are generated (exactly h*w codes each) and
  decoded by the VQ-GAN; the CXR classifier's sigmoid outputs, averaged over the k films, are
  the AUROC scores; F1 prediction = score >= 0.5. The same classifier on the real test films
  gives the "real films" row, the ceiling this metric can reach with that classifier. FID is
  computed between the classifier's pooled features of the generated and the real films
  (exact matrix square root by eigendecomposition, `eval/metrics.py`).
- VQA: questions synthesised from each test record's labels (`data/vqa.py`), answered
  greedily; accuracy after answer normalisation, overall and per category.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llmcxr_jax import decode
from llmcxr_jax.data import images as image_io
from llmcxr_jax.data import labeler, reports, vqa
from llmcxr_jax.eval import metrics
from llmcxr_jax.generate import LLMCXR_SAMPLER, Generator


def binary_labels(texts: Sequence[str], uncertain_positive: bool = False) -> np.ndarray:
    """Reports -> [N, 6] 0/1 over the paper's classes (see the module docstring)."""
    six = labeler.paper_labels(labeler.label_reports(texts))
    pos = six == labeler.POSITIVE
    if uncertain_positive:
        pos |= six == labeler.UNCERTAIN
    return pos.astype(np.int8)


def report_scores(
    generated: Sequence[Sequence[str]], uncertain_positive: bool = False
) -> np.ndarray:
    """k sampled reports per image -> [N, 6] fraction of them that state each class."""
    return np.stack(
        [binary_labels(list(ks), uncertain_positive).mean(axis=0) for ks in generated]
    ).astype(np.float64)


@nnx.jit
def _classify(classifier: Any, pixels: jax.Array) -> tuple[jax.Array, jax.Array]:
    from llmcxr_jax.models import densenet

    x = densenet.xrv_preprocess(pixels, classifier.config.image_size)
    feats = classifier.features(x)
    logits = classifier.classifier(feats["pooled"].astype(classifier.config.dtype))
    return jax.nn.sigmoid(logits.astype(jnp.float32)), feats["pooled"]


def classify(classifier: Any, pixels: np.ndarray, batch_size: int = 32) -> tuple[Any, Any]:
    """Films [N, H, W, 3] in [-1, 1] -> (probabilities [N, classes], pooled features)."""
    probs, feats = [], []
    for s in range(0, len(pixels), batch_size):
        chunk = pixels[s : s + batch_size]
        n = len(chunk)
        if n < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - n, 0)])
        p, f = _classify(classifier, jnp.asarray(chunk))
        probs.append(np.asarray(p)[:n])
        feats.append(np.asarray(f)[:n])
    return np.concatenate(probs), np.concatenate(feats)


def _scored(y_true: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    return {
        "auroc": metrics.multilabel_auroc(y_true, scores),
        "f1": metrics.multilabel_f1(y_true, (scores >= 0.5).astype(np.int8)),
        "prevalence": dict(zip(metrics.PAPER_CLASSES, y_true.mean(0).tolist(), strict=True)),
    }


def _record_text(record: dict[str, Any], stage: int) -> str | None:
    f, i = record.get("findings", ""), record.get("impression", "")
    as_str = [x.decode() if isinstance(x, bytes) else str(x) for x in (f, i)]
    if stage == 2:
        return reports.stage2_text(as_str[1]) or reports.stage1_text(*as_str)
    return reports.stage1_text(*as_str)


def evaluate(
    gen: Generator,
    records: Any,
    out_dir: str | os.PathLike,
    *,
    classifier: Any = None,
    stage: int = 2,
    num_reports: int = 4,
    num_images: int = 1,
    sampler: decode.Sampler = LLMCXR_SAMPLER,
    seed: int = 0,
    max_items: int = 0,
    vqa_questions: int = 2,
    max_report_tokens: int = 256,
    uncertain_positive: bool = False,
    title: str = "ours",
    progress: bool = True,
) -> dict[str, Any]:
    """Run the three evaluations on `records` (a data source with codes); write the outputs."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(records) if not max_items else min(max_items, len(records))
    items, skipped = [], {"no_text": 0, "bad_codes": 0}
    for i in range(n):
        r = records[i]
        text = _record_text(r, stage)
        if not text:
            skipped["no_text"] += 1
            continue
        try:
            codes = gen.check_codes(np.asarray(r["codes"]))
        except ValueError:
            skipped["bad_codes"] += 1
            continue
        rid = r["id"].decode() if isinstance(r["id"], bytes) else str(r["id"])
        items.append({"id": rid, "text": text, "codes": codes, "record": i})
    if not items:
        raise ValueError(f"no usable test records (skipped: {skipped})")
    y_true = binary_labels([it["text"] for it in items], uncertain_positive)
    results: dict[str, Any] = {
        "num_items": len(items),
        "skipped": skipped,
        "settings": {
            "stage": stage,
            "num_reports": num_reports,
            "num_images": num_images,
            "max_report_tokens": max_report_tokens,
            "sampler": {"top_p": sampler.top_p, "temperature": sampler.temperature},
            "seed": seed,
            "uncertain_positive": uncertain_positive,
        },
    }

    # CXR-to-report
    names = [it["id"] for it in items]
    gen_reports = gen.reports(
        [it["codes"] for it in items],
        sampler=sampler,
        seed=seed,
        num_samples=num_reports,
        max_new_tokens=max_report_tokens,
        names=names,
        progress=progress,
    )
    ok = gen_reports.ok
    per_image = [gen_reports.values[i] if num_reports > 1 else [gen_reports.values[i]] for i in ok]
    scores = report_scores(per_image, uncertain_positive)
    results["cxr_to_report"] = _scored(y_true[ok], scores)
    results["cxr_to_report"]["failures"] = [str(f) for f in gen_reports.failures]
    with open(out / "reports.jsonl", "w", encoding="utf-8") as f:
        for j, i in enumerate(ok):
            row = {"id": names[i], "reference": items[i]["text"], "generated": per_image[j]}
            f.write(json.dumps(row) + "\n")

    # Report-to-CXR
    if classifier is not None and gen.vqgan is not None:
        gen_images = gen.images(
            [it["text"] for it in items],
            sampler=sampler,
            seed=seed + 1,
            num_samples=num_images,
            names=names,
            progress=progress,
        )
        ok_i = gen_images.ok
        codes = np.stack([gen_images.values[i] for i in ok_i]).reshape(
            len(ok_i), num_images, gen.num_codes
        )
        pixels = gen.decode(codes)  # [N, k, H, W, 3]
        flat = pixels.reshape(-1, *pixels.shape[2:])
        probs, feats = classify(classifier, flat)
        probs = probs.reshape(len(ok_i), num_images, -1).mean(axis=1)
        real = np.stack([_real_film(records[items[i]["record"]], gen) for i in ok_i])
        real_probs, real_feats = classify(classifier, real)
        r2c = _scored(y_true[ok_i], probs)
        r2c["fid"] = metrics.fid_from_features(feats.astype(np.float64), real_feats)
        r2c["real_films"] = _scored(y_true[ok_i], real_probs)
        r2c["failures"] = [str(f) for f in gen_images.failures]
        results["report_to_cxr"] = r2c
        np.save(out / "generated_codes.npy", codes)
        k = min(8, len(ok_i))
        grid = np.concatenate([real[:k], pixels[:k, 0]])
        image_io.save_grid(grid, out / "samples.png", ncols=k)

    # VQA
    if vqa_questions:
        qs, ans, cats, img = [], [], [], []
        for it in items:
            r = records[it["record"]]
            details = r.get("details", "")
            details = details.decode() if isinstance(details, bytes) else details
            qas = vqa.synthesize(np.asarray(r["labels"]), details or None, seed=seed, key=it["id"])
            for qa in qas[:vqa_questions]:
                qs.append(qa.question)
                ans.append(qa.answer)
                cats.append(qa.category)
                img.append(it["codes"])
        if qs:
            got = gen.answers(img, qs, seed=seed, progress=progress)
            keep = got.ok
            results["vqa"] = metrics.vqa_accuracy(
                [got.values[i] for i in keep], [ans[i] for i in keep], [cats[i] for i in keep]
            )

    (out / "results.json").write_text(json.dumps(results, indent=2, default=_jsonable))
    (out / "results.md").write_text(markdown(results, title))
    return results


def _real_film(record: dict[str, Any], gen: Generator) -> np.ndarray:
    img = record.get("image")
    rid = record["id"].decode() if isinstance(record["id"], bytes) else str(record["id"])
    if isinstance(img, (bytes, bytearray)) and img:
        return image_io.load_cxr(img, gen.resolution, name=rid)
    # no stored pixels (e.g. a paths-only builder): the VQ-GAN reconstruction stands in
    return gen.decode(np.asarray(record["codes"])[None])[0]


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return str(x)


def markdown(results: dict[str, Any], title: str = "ours") -> str:
    """The evaluation as Markdown: the paper-layout tables, per-class detail, FID and VQA."""
    lines = [f"# Evaluation ({results['num_items']} test items)", ""]
    c2r = results.get("cxr_to_report")
    if c2r:
        k = results["settings"]["num_reports"]
        lines += [
            metrics.markdown_table(
                {title: c2r}, f"CXR-to-report (AUROC score: fraction of {k} sampled reports)"
            ),
            "",
            metrics.per_class_table(c2r),
            "",
        ]
    r2c = results.get("report_to_cxr")
    if r2c:
        lines += [
            metrics.markdown_table(
                {title: r2c, "CXR classifier on the real films (ceiling)": r2c["real_films"]},
                "Report-to-CXR (CXR classifier on generated films)",
            ),
            "",
            metrics.per_class_table(r2c),
            "",
            f"FID (classifier features, generated vs real): {r2c['fid']:.3f} "
            f"(LLM-CXR published on MIMIC-CXR: {metrics.PAPER_FID['LLM-CXR']})",
            "",
        ]
    v = results.get("vqa")
    if v:
        lines += [
            f"VQA accuracy: {v['overall']:.3f} over {v['count']} questions "
            f"(LLM-CXR published on MIMIC-CXR: {metrics.PAPER_VQA['LLM-CXR']:.3f})",
            "",
            "| Category | Accuracy | Questions |",
            "|---|---:|---:|",
        ]
        for cat, acc in sorted(v["per_category"].items()):
            lines.append(f"| {cat} | {acc:.3f} | {v['per_category_count'][cat]} |")
        lines.append("")
    lines.append(
        "Published rows are the LLM-CXR paper's figures on MIMIC-CXR; ours are on the data set "
        "evaluated here, so they are not directly comparable."
    )
    return "\n".join(lines) + "\n"
