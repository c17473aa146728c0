"""The paper's evaluation of a checkpoint on a prepared data set's split.

    llmcxr-jax evaluate --checkpoint run/stage2 --vqgan run/vqgan/model \\
        --classifier run/vqgan/classifier --dataset cxr_phantoms/64 --data-dir DIR --split test

Writes `results.json`, `results.md` (the tables, the paper's published rows beside ours; a
report-generation table in the field's layout beside other models' published figures),
`samples.png` (real films above the films generated from their reports), `recon.png` (real
films above their VQ-GAN reconstructions), `reports.jsonl` (reference, sampled and greedy
reports), `probabilities.jsonl` (p(yes) per film and class), `items.jsonl` and `items.csv` (one
row per test item: its reports, every labeler's labels, per-item metrics and the paths of its
generated films, `films/<id>_<k>.png`; columns in docs/evaluation.md, "Per-item outputs") to
`--out`; `summary_lines(results)` gives the figures as plain-text lines.

How the numbers are formed (the original never said; these are our definitions):

- References: each test record's report text for the model's stage (stage 2: IMPRESSION;
  stage 1: FINDINGS + IMPRESSION) is labelled by our CheXpert-style labeler
  (`data/labeler.py`), and the 14 observations are reduced to the paper's six classes
  (Consolidation/Pneumonia merged). Positive = 1; negative, absent and, by default, uncertain
  = 0 (`uncertain_positive=True` counts "uncertain" as positive, CheXpert's U-Ones).
- CXR-to-report, two scores. An AUROC needs a score per (film, class), and a generator gives
  text, so the score has to be made from the model's outputs:
  - `cxr_to_report` (the paper's kind): for each test film `k` reports are sampled (top-p
    0.92, LLM-CXR's setting) and labelled like the references; the score of class c = the
    fraction of the k reports that state c (k = 1 gives a 0/1 score). It varies with the seed
    and moves in steps of 1/k.
  - `cxr_to_report_prob` (deterministic, low variance): the model's own probability of
    stating each finding given the film. For each film and class the model is asked the VQA
    presence question of the training data (`PRESENCE_QUESTIONS`: the first `vqa.PRESENCE`
    template with the class's first `vqa.FINDINGS` phrase; for No Finding the first
    `vqa.NORMAL` question, "Is this chest X-ray normal?", whose "yes" means normal), and the
    score is p(yes) / (p(yes) + p(no)) from the next-token distribution after the prompt (one
    forward pass, no sampling; `Generator.answer_probabilities`). "yes" and "no" stand for the
    first token of each answer as it appears in a training paragraph
    (`Generator.answer_token_ids`).
  Either way the F1 prediction is score >= 0.5.
- Greedy reports: one extra greedy report per film; `greedy_exact_match` is the fraction of
  films whose six 0/1 labels all equal the reference's.
- Report text (`report_text`): corpus BLEU-1..4, ROUGE-L and CIDEr-D of the greedy report
  (without greedy reports: the first sampled one) against the reference text, as
  pycocoevalcap computes them (`eval/text_metrics.py`; CIDEr-D's document frequencies come
  from this split's references); per-film scores in `reports.jsonl` (`text_scores`). No
  interval: CIDEr-D's IDF and corpus BLEU's counts are not per-item sums to resample.
- Report metrics from local weights (`report_models`): F1-CheXbert, RadGraph F1 and
  BERTScore of the same texts, each with intervals, or a "skipped: why" row where its weights
  were not given (`eval/report_models.py`, docs/evaluation.md).
- Report-to-CXR: for each test report, `k` films are generated (exactly h*w codes each) and
  decoded by the VQ-GAN; the CXR classifier's sigmoid outputs, averaged over the k films, are
  the AUROC scores; F1 prediction = score >= 0.5. The same classifier on the real test films
  gives the "real films" row, the ceiling this metric can reach with that classifier. FID is
  computed between the classifier's pooled features of the generated and the real films
  (exact matrix square root by eigendecomposition, `eval/metrics.py`).
- Film metrics (`films`, `eval/film_metrics.py`, docs/evaluation.md): FID on torchxrayvision
  DenseNet-121 features (`xrv_model`; none given: a skipped row), MS-SSIM between each
  generated film and the real film of its report (mean over its k films; items with stored
  pixels) with its mismatched control, and diversity: the mean MS-SSIM of pairs of films
  generated from one report (all pairs of its k films; with k = 1, a second film, seed + 2,
  for `diversity_films` reports), beside the MS-SSIM of first films of distinct reports.
- VQA: questions synthesised from each test record's labels (`data/vqa.py`), answered
  greedily; accuracy after answer normalisation, overall and per category.
- VQ-GAN reconstructions (`reconstruction`, with a VQ-GAN and films stored in the records):
  PSNR = 10 log10(2^2 / MSE) on the [-1, 1] scale per film (the channel mean of the real film
  where the VQ-GAN is grey), averaged over films; SSIM per film as pytorch-msssim computes it
  (`film_metrics.ssim`, data range 2), averaged over films; and "clinical information kept": the
  classifier's AUROC on the reconstructions over its AUROC on the real films (micro, macro).

Intervals: every figure has a seeded 95% percentile-bootstrap interval over test items
(`metrics.bootstrap_ci`: items resampled with replacement, `bootstrap` resamples, 1,000 by
default, seeded by `seed`; resamples where a figure is undefined, e.g. an AUROC with one label
only, are dropped). All figures over the same items are computed on the same resamples. FID
is costly (two eigendecompositions per resample) and uses at most `FID_BOOTSTRAP` (200)
resamples, generated and real films of an item resampled together. VQA resamples questions
(several come from one film, so its interval is somewhat narrow). Keys `<figure>_ci95` hold
[lo, hi] beside each figure. A percentile interval need not contain its point estimate where
the statistic is biased under resampling or moves in jumps (F1, whose class supports change
from resample to resample; FID, whose small-sample bias grows when a resample repeats items).

Controls (`mismatched`): with a derangement d of the test items (`metrics.derangement`: a
seeded permutation with no fixed point), the outputs made from item d[i]'s input are scored
against item i's labels. This is the evaluation of the model with each test item's input
swapped for another's (film codes for CXR-to-report, report for report-to-CXR): an output
depends on nothing but its input and the sampling noise, so what the model said given d[i]'s
input is what it says when item i's input is replaced by d[i]'s: the same value for greedy
decoding and p(yes), a draw from the same distribution when sampling. No extra generation is
needed, and the control uses the same outputs as the real figure. A model that reads its
input falls to about chance (AUROC 0.5) there; a real figure no better than its control means
the outputs do not depend on the input (e.g. a model that learnt only the label prevalence).
(Where several test items share one film or report, a swap may keep the input; our test
splits hold one film per item.)
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llmcxr_jax import decode
from llmcxr_jax.data import images as image_io
from llmcxr_jax.data import labeler, reports, vqa
from llmcxr_jax.data.labels import POSITIVE, UNCERTAIN, paper_labels
from llmcxr_jax.errors import InputError
from llmcxr_jax.eval import film_metrics, metrics, report_models, text_metrics
from llmcxr_jax.generate import LLMCXR_SAMPLER, Generator

FID_BOOTSTRAP = 200  # resamples for the FID interval (each costs two eigendecompositions)
LEVEL = 0.95  # the intervals' coverage (the `_ci95` keys)
ANSWERS = ("yes", "no")
MIN_MSE = 1e-10  # PSNR of a film reconstructed exactly: 10 log10(4 / 1e-10) = 106 dB, not inf
FILMS_DIR = "films"  # the generated films, `films/<id>_<k>.png` under the output directory

log = logging.getLogger(__name__)


def _presence_questions() -> dict[str, str]:
    """Paper class -> the training data's presence question for it (first template)."""
    out = {}
    for cls in metrics.PAPER_CLASSES:
        if cls == "No Finding":
            q = vqa.NORMAL[0]
            if "normal" not in q.lower() or "abnormality" in q.lower():
                raise AssertionError(f"{q!r}: 'yes' must mean normal")
        else:
            phrase = next(p for p, c in vqa.FINDINGS.values() if c == cls)
            q = vqa.PRESENCE[0].format(f=phrase)
        out[cls] = q
    return out


PRESENCE_QUESTIONS: dict[str, str] = _presence_questions()


def binary_labels(texts: Sequence[str], uncertain_positive: bool = False) -> np.ndarray:
    """Reports -> [N, 6] 0/1 over the paper's classes (see the module docstring)."""
    six = paper_labels(labeler.label_reports(texts))
    pos = six == POSITIVE
    if uncertain_positive:
        pos |= six == UNCERTAIN
    return pos.astype(np.int8)


def report_scores(
    generated: Sequence[Sequence[str]], uncertain_positive: bool = False
) -> np.ndarray:
    """k sampled reports per image -> [N, 6] fraction of them that state each class."""
    return np.stack(
        [binary_labels(list(ks), uncertain_positive).mean(axis=0) for ks in generated]
    ).astype(np.float64)


def yes_scores(probabilities: Sequence[np.ndarray]) -> np.ndarray:
    """[p(yes), p(no)] per question -> p(yes) / (p(yes) + p(no)) (0.5 where both are 0)."""
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1, 2)
    total = p.sum(axis=1)
    return np.where(total > 0, p[:, 0] / np.where(total > 0, total, 1.0), 0.5)


@nnx.jit
def _classify(classifier: Any, pixels: jax.Array) -> tuple[jax.Array, jax.Array]:
    from llmcxr_jax.models import densenet

    x = densenet.xrv_preprocess(pixels, classifier.config.image_size)
    feats = classifier.features(x)
    logits = classifier.classifier(feats["pooled"].astype(classifier.config.dtype))
    return jax.nn.sigmoid(logits.astype(jnp.float32)), feats["pooled"]


def classify(classifier: Any, pixels: np.ndarray, batch_size: int = 32) -> tuple[Any, Any]:
    """Films [N, H, W, C] in [-1, 1] -> (probabilities [N, classes], pooled features)."""
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


def _add_ci(res: dict[str, Any], y_true: np.ndarray, scores: np.ndarray, num: int, seed: int):
    """auroc_ci95 / f1_ci95 ({average: [lo, hi]}) beside a `_scored` result (num 0: none)."""
    if num and len(y_true):
        ci = metrics.multilabel_ci(
            y_true, scores, (scores >= 0.5).astype(np.int8), num=num, seed=seed, level=LEVEL
        )
        res["auroc_ci95"], res["f1_ci95"] = ci["auroc"], ci["f1"]
    return res


def scored_with_controls(
    y_true: np.ndarray, scores: np.ndarray, *, bootstrap: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """`_scored` with bootstrap intervals and the mismatched-input control (`mismatched`:
    item i's labels against the scores of item d[i], d = metrics.derangement(n, seed))."""
    res = _add_ci(_scored(y_true, scores), y_true, scores, bootstrap, seed)
    if len(y_true) >= 2:
        d = metrics.derangement(len(y_true), seed)
        res["mismatched"] = _add_ci(_scored(y_true, scores[d]), y_true, scores[d], bootstrap, seed)
    return res


def _interval(stat: Any, arrays: Any, num: int, seed: int) -> list[float] | None:
    n = len(arrays[0]) if isinstance(arrays, (list, tuple)) else len(arrays)
    if not num or n == 0:
        return None
    return list(metrics.bootstrap_ci(stat, arrays, num=num, seed=seed, level=LEVEL))


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
    bootstrap: int = 1000,
    probability_score: bool = True,
    greedy_reports: bool = True,
    xrv_model: Any = None,
    diversity_films: int = 0,
    report_scorers: report_models.ReportModels | None = None,
) -> dict[str, Any]:
    """Run the evaluations on `records` (a data source with codes); write the outputs.

    `bootstrap`: resamples for the 95% intervals (0: none; FID uses at most `FID_BOOTSTRAP`),
    seeded by `seed` like the controls. `probability_score`: also the deterministic
    CXR-to-report score (p(yes) to the presence questions); `greedy_reports`: one extra greedy
    report per film for the label exact-match rate. `xrv_model`: a torchxrayvision DenseNet
    (`film_metrics.load_xrv`) for the xrv-feature FID; `diversity_films`: with one generated
    film per report, a second film for that many reports, for the diversity figure.
    `report_scorers`: the model-based report metrics (`report_models.load_report_models`;
    None: all listed as skipped). See the module docstring.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bootstrap = max(int(bootstrap), 0)
    fid_num = min(bootstrap, FID_BOOTSTRAP)
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
        raise InputError(f"no usable test records (skipped: {skipped})")
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
            "bootstrap": {"resamples": bootstrap, "fid_resamples": fid_num, "level": LEVEL},
            "probability_score": probability_score,
            "greedy_reports": greedy_reports,
            "diversity_films": diversity_films,
        },
    }

    # CXR-to-report, the paper's score: the fraction of k sampled reports stating each class
    names = [it["id"] for it in items]
    all_codes = [it["codes"] for it in items]
    gen_reports = gen.reports(
        all_codes,
        sampler=sampler,
        seed=seed,
        num_samples=num_reports,
        max_new_tokens=max_report_tokens,
        names=names,
        progress=progress,
    )
    ok = gen_reports.ok
    per_image = [gen_reports.values[i] if num_reports > 1 else [gen_reports.values[i]] for i in ok]
    c2r: dict[str, Any] = {}
    if ok:
        scores = report_scores(per_image, uncertain_positive)
        c2r = scored_with_controls(y_true[ok], scores, bootstrap=bootstrap, seed=seed)
    c2r["failures"] = [str(f) for f in gen_reports.failures]
    results["cxr_to_report"] = c2r

    greedy: list[str | None] = [None] * len(items)
    if greedy_reports:
        got = gen.reports(
            all_codes,
            sampler=decode.GREEDY,
            seed=seed,
            max_new_tokens=max_report_tokens,
            names=names,
            progress=progress,
        )
        greedy = list(got.values)
        gok = got.ok
        if gok:
            labels = binary_labels([greedy[i] for i in gok], uncertain_positive)
            exact = (labels == y_true[gok]).all(axis=1).astype(np.float64)
            c2r["greedy_exact_match"] = float(exact.mean())
            c2r["greedy_exact_match_ci95"] = _interval(np.mean, exact, bootstrap, seed)
            c2r["greedy_count"] = len(gok)
        c2r["greedy_failures"] = [str(f) for f in got.failures]

    # report text metrics (BLEU, ROUGE-L, CIDEr-D): the greedy report, else the first sample
    if greedy_reports:
        text_idx, source = [i for i in range(len(items)) if greedy[i] is not None], "greedy"
        text_gen = [greedy[i] for i in text_idx]
    else:
        text_idx, source = list(ok), "first sampled"
        text_gen = [reps[0] for reps in per_image]
    per_item_text: dict[int, dict[str, float]] = {}
    if text_idx:
        scored_text = text_metrics.text_scores(text_gen, [items[i]["text"] for i in text_idx])
        results["report_text"] = {
            **scored_text.corpus,
            "source": source,
            "count": len(text_idx),
        }
        for j, i in enumerate(text_idx):
            per_item_text[i] = {k: v[j] for k, v in scored_text.per_item.items()}
    # report metrics from local weights (CheXbert, RadGraph, BERTScore) on the same texts
    scorers = report_scorers or report_models.load_report_models()
    per_item_model: dict[int, dict[str, Any]] = {}
    if text_idx:
        refs = [items[i]["text"] for i in text_idx]
        got_rm, per_rm = report_models.score_reports(
            scorers, text_gen, refs, bootstrap=bootstrap, seed=seed, level=LEVEL
        )
        results["report_models"] = {**got_rm, "source": source}
        per_item_model = {i: per_rm[j] for j, i in enumerate(text_idx) if per_rm[j]}
    # per item (items.jsonl / items.csv): its reports, the metric values, later its films
    sampled: list[list[str] | None] = [None] * len(items)
    for j, i in enumerate(ok):
        sampled[i] = list(per_image[j])
    per_item = _ItemData(
        sampled=sampled,
        greedy=greedy if greedy_reports else None,
        hypothesis_from="greedy" if greedy_reports else "sampled_1",
        hypothesis={i: text_gen[j] for j, i in enumerate(text_idx)},
        text=per_item_text,
        model=per_item_model,
        model_columns=_model_columns(results.get("report_models") or {}),
    )
    with open(out / "reports.jsonl", "w", encoding="utf-8") as f:
        for j, i in enumerate(ok):
            row = {
                "id": names[i],
                "reference": items[i]["text"],
                "generated": per_image[j],
                "greedy": greedy[i],
                "text_scores": per_item_text.get(i),
                "model_scores": per_item_model.get(i),
            }
            f.write(json.dumps(row) + "\n")

    # CXR-to-report, deterministic: the model's p(yes) to each class's presence question
    if probability_score:
        questions = [PRESENCE_QUESTIONS[c] for c in metrics.PAPER_CLASSES]
        C = len(questions)
        got = gen.answer_probabilities(
            [c for c in all_codes for _ in questions],
            questions * len(items),
            ANSWERS,
            names=[f"{name}: {q}" for name in names for q in questions],
            progress=progress,
        )
        okp = [
            i for i in range(len(items)) if all(got.values[i * C + c] is not None for c in range(C))
        ]
        prob: dict[str, Any] = {}
        if okp:
            p_yes = np.stack([yes_scores(got.values[i * C : (i + 1) * C]) for i in okp])
            prob = scored_with_controls(y_true[okp], p_yes, bootstrap=bootstrap, seed=seed)
            ids = gen.answer_token_ids(questions[0], ANSWERS)
            prob["answer_tokens"] = {
                a: {"id": t, "text": gen.tokenizer.decode_text([t])}
                for a, t in zip(ANSWERS, ids, strict=True)
            }
        prob["questions"] = dict(zip(metrics.PAPER_CLASSES, questions, strict=True))
        prob["failures"] = [str(f) for f in got.failures]
        results["cxr_to_report_prob"] = prob
        with open(out / "probabilities.jsonl", "w", encoding="utf-8") as f:
            for j, i in enumerate(okp):
                row = dict(zip(metrics.PAPER_CLASSES, p_yes[j].tolist(), strict=True))
                f.write(json.dumps({"id": names[i], "p_yes": row}) + "\n")

    # The films: real ones (stored pixels), VQ-GAN reconstructions, and their classification
    real_all = real_probs_all = real_feats_all = None
    if gen.vqgan is not None:
        recon_all = gen.decode(np.stack(all_codes))  # [N, H, W, C]
        stored = [_stored_film(records[it["record"]], gen) for it in items]
        rec_idx = [i for i, film in enumerate(stored) if film is not None]
        stand_in = _as_rgb(recon_all)  # the real film where a record holds no pixels
        real_all = np.stack([stand_in[i] if s is None else s for i, s in enumerate(stored)])
        rec: dict[str, Any] = {"films": len(rec_idx), "no_pixels": len(items) - len(rec_idx)}
        if rec_idx:
            real, recon = _same_channels(real_all[rec_idx], recon_all[rec_idx])
            psnr = psnr_per_film(real, recon)
            rec["psnr"] = float(psnr.mean())
            rec["psnr_ci95"] = _interval(np.mean, psnr, bootstrap, seed)
            per_item.put_films("recon_psnr", rec_idx, psnr)
            if min(real.shape[1:3]) >= film_metrics.WIN_SIZE:
                ssim = film_metrics.batched(film_metrics.ssim, real, recon)
                rec["ssim"] = float(ssim.mean())
                rec["ssim_ci95"] = _interval(np.mean, ssim, bootstrap, seed)
                per_item.put_films("recon_ssim", rec_idx, ssim)
            else:
                rec["ssim_skipped"] = f"films under the {film_metrics.WIN_SIZE}-px SSIM window"
            k = min(8, len(rec_idx))
            image_io.save_grid(np.concatenate([real[:k], recon[:k]]), out / "recon.png", ncols=k)
        if classifier is not None:
            real_probs_all, real_feats_all = classify(classifier, real_all)
            if rec_idx:
                rec_probs, _ = classify(classifier, recon_all[rec_idx])
                y = y_true[rec_idx]
                rp = real_probs_all[rec_idx]
                rec["real_films"] = _add_ci(_scored(y, rp), y, rp, bootstrap, seed)
                rec["reconstructions"] = _add_ci(
                    _scored(y, rec_probs), y, rec_probs, bootstrap, seed
                )
                rec.update(_kept(y, rp, rec_probs, bootstrap, seed))
        results["reconstruction"] = rec

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
        r2c: dict[str, Any] = {}
        if ok_i:
            codes = np.stack([gen_images.values[i] for i in ok_i]).reshape(
                len(ok_i), num_images, gen.num_codes
            )
            pixels = gen.decode(codes)  # [N, k, H, W, C]
            per_item.films = _save_films(out, [items[i]["id"] for i in ok_i], pixels, ok_i)
            flat = pixels.reshape(-1, *pixels.shape[2:])
            probs, feats = classify(classifier, flat)
            probs = probs.reshape(len(ok_i), num_images, -1).mean(axis=1)
            real = real_all[ok_i]
            real_probs, real_feats = real_probs_all[ok_i], real_feats_all[ok_i]
            y = y_true[ok_i]
            r2c = scored_with_controls(y, probs, bootstrap=bootstrap, seed=seed)
            feats = feats.astype(np.float64).reshape(len(ok_i), num_images, -1)
            real_feats = real_feats.astype(np.float64)
            if len(ok_i) >= 2:
                r2c["fid"] = _fid(feats, real_feats)
                r2c["fid_ci95"] = _interval(_fid, [feats, real_feats], fid_num, seed)
            r2c["real_films"] = _add_ci(_scored(y, real_probs), y, real_probs, bootstrap, seed)
            results["films"] = _film_figures(
                gen, items, ok_i, pixels, real, [stored[i] is not None for i in ok_i],
                xrv_model=xrv_model, diversity_films=diversity_films, sampler=sampler,
                seed=seed, bootstrap=bootstrap, fid_num=fid_num, progress=progress,
                per_item=per_item,
            )  # fmt: skip
            np.save(out / "generated_codes.npy", codes)
            k = min(8, len(ok_i))
            grid = np.concatenate(_same_channels(real[:k], pixels[:k, 0]))
            image_io.save_grid(grid, out / "samples.png", ncols=k)
        r2c["failures"] = [str(f) for f in gen_images.failures]
        results["report_to_cxr"] = r2c

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
            preds, refs = [got.values[i] for i in keep], [ans[i] for i in keep]
            v = metrics.vqa_accuracy(preds, refs, [cats[i] for i in keep])
            if keep:
                hits = metrics.vqa_hits(preds, refs).astype(np.float64)
                v["overall_ci95"] = _interval(np.mean, hits, bootstrap, seed)
            results["vqa"] = v

    write_items(out, _item_rows(items, y_true, per_item, uncertain_positive, scorers.chexbert))
    (out / "results.json").write_text(json.dumps(results, indent=2, default=_jsonable))
    (out / "results.md").write_text(markdown(results, title))
    return results


def _fid(gen_feats: np.ndarray, real_feats: np.ndarray) -> float:
    """FID between generated [N, k, D] and real [N, D] features (k films per item)."""
    return metrics.fid_from_features(gen_feats.reshape(-1, gen_feats.shape[-1]), real_feats)


def _film_figures(
    gen: Generator,
    items: list[dict[str, Any]],
    ok_i: list[int],
    pixels: np.ndarray,
    real: np.ndarray,
    has_pixels: list[bool],
    *,
    xrv_model: Any,
    diversity_films: int,
    sampler: decode.Sampler,
    seed: int,
    bootstrap: int,
    fid_num: int,
    progress: bool,
    per_item: _ItemData | None = None,
) -> dict[str, Any]:
    """The generated films' figures (`films` in results.json; see eval/film_metrics.py and
    docs/evaluation.md): xrv-feature FID, MS-SSIM to the real film of the same report and its
    mismatched control, diversity (MS-SSIM of two films of one report) and its distinct-report
    reference. `pixels` [N, k, H, W, C], `real` [N, H, W, C] for the items `ok_i`; a figure
    that cannot be formed is named in `skipped` with the reason. `per_item`: gets each item's
    MS-SSIM to its real film, its control and its diversity."""
    n, k = pixels.shape[:2]
    g, r = _same_channels(pixels, real)
    res: dict[str, Any] = {"generated_films": n * k, "skipped": {}}
    skip = res["skipped"]
    if xrv_model is None:
        skip["fid_xrv"] = "no --xrv-weights"
    elif n < 2:
        skip["fid_xrv"] = "fewer than 2 reports with generated films"
    else:
        gf = film_metrics.xrv_features(xrv_model, pixels.reshape(n * k, *pixels.shape[2:]))
        rf = film_metrics.xrv_features(xrv_model, real)
        gf = gf.reshape(n, k, -1)
        res["fid_xrv"] = _fid(gf, rf)
        res["fid_xrv_ci95"] = _interval(_fid, [gf, rf], fid_num, seed)
    m = film_metrics.ms_ssim_scales(*g.shape[2:4])
    if not m:
        why = (
            f"films of {g.shape[2]}x{g.shape[3]} px are under the {film_metrics.WIN_SIZE}-px window"
        )
        skip.update(ms_ssim_real=why, diversity=why)
        return res
    res["ms_ssim_scales"] = m
    res["ms_ssim_weights"] = list(film_metrics.ms_ssim_weights(m))

    def ms(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return film_metrics.batched(film_metrics.ms_ssim, a, b)

    def put(key: str, values: np.ndarray, rows: Sequence[int] | None = None) -> None:
        """A figure from per-report values; `rows`: their reports (0..n-1), kept per item."""
        res[key] = float(values.mean())
        res[f"{key}_ci95"] = _interval(np.mean, values, bootstrap, seed)
        res[f"{key}_count"] = len(values)
        if per_item is not None and rows is not None:
            per_item.put_films(key, [ok_i[j] for j in rows], values)

    px = [j for j in range(n) if has_pixels[j]]
    if px:
        # per report: the mean over its k films of MS-SSIM to the report's real film
        to_real = np.mean([ms(g[px, t], r[px]) for t in range(k)], axis=0)
        put("ms_ssim_real", to_real, px)
        if len(px) >= 2:
            d = np.asarray(px)[metrics.derangement(len(px), seed)]
            put("ms_ssim_real_mismatched", np.mean([ms(g[d, t], r[px]) for t in range(k)], 0), px)
    else:
        skip["ms_ssim_real"] = "no stored real films"
    if n >= 2:  # the reference for diversity: first films of two distinct reports
        put("diversity_distinct", ms(g[:, 0], g[metrics.derangement(n, seed), 0]))
    if k >= 2:
        put("diversity", film_metrics.pairwise_ms_ssim(g), range(n))
        res["diversity_source"] = f"all pairs of the {k} films of each report"
    elif diversity_films:
        sub = list(range(min(int(diversity_films), n)))
        second = gen.images(
            [items[ok_i[j]]["text"] for j in sub],
            sampler=sampler,
            seed=seed + 2,
            names=[items[ok_i[j]]["id"] for j in sub],
            progress=progress,
        )
        if second.ok:
            two = gen.decode(np.stack([second.values[t] for t in second.ok]))
            first = pixels[[sub[t] for t in second.ok], 0]
            a, b = _same_channels(first, two)
            put("diversity", ms(a, b), [sub[t] for t in second.ok])
            res["diversity_source"] = (
                f"a second film (seed {seed + 2}) for {len(second.ok)} of the reports"
            )
        else:
            skip["diversity"] = "no second film could be generated"
    else:
        skip["diversity"] = "one film per report (--num-images 2 or --diversity-films N)"
    return res


def _kept(y: np.ndarray, real: np.ndarray, recon: np.ndarray, num: int, seed: int) -> dict:
    """Classifier AUROC on reconstructions over on the real films (micro, macro), and its
    interval from the same resamples for both (`kept_ci95`)."""
    a_real = metrics.multilabel_auroc(y, real)
    a_rec = metrics.multilabel_auroc(y, recon)
    out: dict[str, Any] = {"kept": {}}
    for avg in ("micro", "macro"):
        den = a_real[avg]
        out["kept"][avg] = a_rec[avg] / den if den and not math.isnan(den) else float("nan")
    if num:
        counts = metrics.bootstrap_counts(len(y), num, seed)
        br = metrics.multilabel_bootstrap(y, real, counts=counts)["auroc"]
        bc = metrics.multilabel_bootstrap(y, recon, counts=counts)["auroc"]
        with np.errstate(invalid="ignore", divide="ignore"):
            out["kept_ci95"] = {
                avg: list(metrics.percentile_interval(bc[avg] / br[avg], LEVEL))
                for avg in ("micro", "macro")
            }
    return out


def psnr_per_film(real: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """[N] PSNR in dB of films in [-1, 1] (peak-to-peak 2): 10 log10(2^2 / MSE), MSE floored at
    `MIN_MSE`; both [N, H, W, C] with the same channels (`_same_channels`)."""
    a = np.asarray(real, np.float64)
    b = np.asarray(recon, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"real {a.shape} and reconstructed {b.shape} films differ in shape")
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)
    return 10.0 * np.log10(4.0 / np.maximum(mse, MIN_MSE))


def _same_channels(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two image stacks [..., C] with the same channel count: grey (channel mean, C = 1) if
    either is grey (a grey VQ-GAN's output beside grey-replicated RGB films)."""
    if a.shape[-1] == b.shape[-1]:
        return a, b
    if a.shape[-1] == 1 or b.shape[-1] == 1:
        return a.mean(axis=-1, keepdims=True), b.mean(axis=-1, keepdims=True)
    raise ValueError(f"cannot match {a.shape[-1]} and {b.shape[-1]} channels")


def _as_rgb(x: np.ndarray) -> np.ndarray:
    """Grey [..., 1] replicated to [..., 3] (as films load); RGB as is."""
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def _stored_film(record: dict[str, Any], gen: Generator) -> np.ndarray | None:
    """The record's own film [H, W, 3] in [-1, 1], or None where it holds no readable pixels."""
    img = record.get("image")
    rid = record["id"].decode() if isinstance(record["id"], bytes) else str(record["id"])
    if isinstance(img, (bytes, bytearray)) and img:
        try:
            return image_io.load_cxr(img, gen.resolution, name=rid)
        except (ValueError, OSError):
            return None
    return None


def _real_film(record: dict[str, Any], gen: Generator) -> np.ndarray:
    """The record's film, or (no stored pixels, e.g. a paths-only builder) its VQ-GAN
    reconstruction standing in."""
    film = _stored_film(record, gen)
    if film is not None:
        return film
    return _as_rgb(gen.decode(np.asarray(record["codes"])[None])[0])


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return str(x)


# --------------------------------------------------------------------------------------------
# Per-item outputs: items.jsonl, items.csv and films/
# --------------------------------------------------------------------------------------------

TEXT_ITEM_COLUMNS = (*(f"bleu_{k}" for k in range(1, 5)), "rouge_l", "cider_d")
FILM_ITEM_COLUMNS = (
    "ms_ssim_real",
    "ms_ssim_real_mismatched",
    "diversity",
    "recon_psnr",
    "recon_ssim",
)


@dataclass
class _ItemData:
    """What `evaluate` keeps per test item for items.jsonl / items.csv (keys: item indices)."""

    sampled: list[list[str] | None]  # the k sampled reports (None: generation failed)
    greedy: list[str | None] | None  # None: no greedy reports
    hypothesis_from: str  # which report the text metrics scored: "greedy" or "sampled_1"
    hypothesis: dict[int, str]
    text: dict[int, dict[str, float]]  # text_metrics per item
    model: dict[int, dict[str, Any]]  # report_models per item (`model_scores`)
    model_columns: list[str]  # the report_models keys that ran (radgraph_*, bertscore_*)
    films: dict[int, list[str]] = field(default_factory=dict)  # paths under the output dir
    film_values: dict[str, dict[int, float]] = field(default_factory=dict)

    def put_films(self, key: str, rows: Sequence[int], values: Any) -> None:
        """Per-item values of a film figure (`rows`: item indices, aligned with `values`)."""
        col = self.film_values.setdefault(key, {})
        for i, v in zip(rows, np.asarray(values, np.float64).tolist(), strict=True):
            col[int(i)] = v


def _model_columns(res: dict[str, Any]) -> list[str]:
    """The per-item report_models keys of the metrics that ran (CheXbert's labels have their
    own columns)."""
    cols: list[str] = []
    if "skipped" not in res.get("radgraph", {"skipped": ""}):
        cols += [f"radgraph_{level}" for level in report_models.RADGRAPH_LEVELS]
    if "skipped" not in res.get("bertscore", {"skipped": ""}):
        cols += [f"bertscore_{k}" for k in ("precision", "recall", "f1")]
    return cols


def film_stems(ids: Sequence[str]) -> list[str]:
    """File-name stems for items' films: the id with characters other than letters, digits,
    '.', '_' and '-' replaced by '_' (ids may hold '/'), made unique by the item's position."""
    seen: set[str] = set()
    out = []
    for i, rid in enumerate(ids):
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", str(rid)).lstrip(".") or "item"
        while stem in seen:
            stem = f"{stem}-{i}"
        seen.add(stem)
        out.append(stem)
    return out


def _save_films(
    out: Path, ids: Sequence[str], pixels: np.ndarray, rows: Sequence[int]
) -> dict[int, list[str]]:
    """Write films [N, k, H, W, C] in [-1, 1] as `films/<id>_<t>.png` (t = 1..k; grey or RGB
    as the VQ-GAN gives them); item index `rows[j]` -> its paths, relative to `out`."""
    paths: dict[int, list[str]] = {}
    for j, stem in enumerate(film_stems(ids)):
        rel = [f"{FILMS_DIR}/{stem}_{t + 1}.png" for t in range(pixels.shape[1])]
        for t, name in enumerate(rel):
            image_io.save_png(pixels[j, t], out / name)
        paths[int(rows[j])] = rel
    return paths


def _item_rows(
    items: list[dict[str, Any]],
    y_true: np.ndarray,
    data: _ItemData,
    uncertain_positive: bool,
    chexbert: report_models.CheXbert | None,
) -> list[dict[str, Any]]:
    """One row per test item, every row with the same keys (see docs/evaluation.md)."""
    k = max((len(s) for s in data.sampled if s), default=0)
    m = max((len(p) for p in data.films.values()), default=0)
    generated: list[dict[str, str | None]] = []
    for i in range(len(items)):
        g: dict[str, str | None] = {}
        if data.greedy is not None:
            g["greedy"] = data.greedy[i]
        s = data.sampled[i] or []
        g.update({f"sampled_{t + 1}": s[t] if t < len(s) else None for t in range(k)})
        generated.append(g)
    # labels per distinct text: our labeler (references: y_true, the tables' labels) and CheXbert
    texts = list(dict.fromkeys(t for g in generated for t in g.values() if t is not None))
    ours: dict[str, list[int]] = {}
    if texts:
        ours = dict(zip(texts, binary_labels(texts, uncertain_positive).tolist(), strict=True))
    chex: dict[str, list[int]] = {}
    if chexbert is not None:
        for i, p in data.model.items():  # labelled already by report_models.score_reports
            if "chexbert_reference" in p:
                chex[items[i]["text"]] = p["chexbert_reference"]
                chex[data.hypothesis[i]] = p["chexbert_generated"]
        todo = [t for t in dict.fromkeys([*texts, *(it["text"] for it in items)]) if t not in chex]
        if todo:
            chex.update(zip(todo, chexbert.labels(todo).tolist(), strict=True))

    def ours_of(t: str | None) -> dict[str, int] | None:
        return None if t is None else dict(zip(metrics.PAPER_CLASSES, ours[t], strict=True))

    def chex_of(t: str | None) -> dict[str, int] | None:
        if t is None:
            return None
        return dict(zip(report_models.CHEXBERT_CLASSES, map(int, chex[t]), strict=True))

    rows = []
    for i, it in enumerate(items):
        g = generated[i]
        row: dict[str, Any] = {
            "id": it["id"],
            "reference": it["text"],
            "hypothesis": data.hypothesis.get(i),
            "hypothesis_from": data.hypothesis_from,
            **g,
        }
        if m:
            films = data.films.get(i, [])
            row["prompt"] = it["text"]
            row["img_savename"] = films[0] if films else None
            row.update({f"film_{t + 1}": films[t] if t < len(films) else None for t in range(m)})
        row.update({key: data.text.get(i, {}).get(key) for key in TEXT_ITEM_COLUMNS})
        row.update({key: data.model.get(i, {}).get(key) for key in data.model_columns})
        row["labels_reference"] = dict(zip(metrics.PAPER_CLASSES, y_true[i].tolist(), strict=True))
        row.update({f"labels_{name}": ours_of(t) for name, t in g.items()})
        if chexbert is not None:
            row["chexbert_reference"] = chex_of(it["text"])
            row.update({f"chexbert_{name}": chex_of(t) for name, t in g.items()})
        films_of = {c: v for c, v in data.film_values.items() if c in FILM_ITEM_COLUMNS}
        row.update({c: films_of[c].get(i) for c in FILM_ITEM_COLUMNS if c in films_of})
        rows.append(row)
    return rows


def _finite(v: Any) -> Any:
    """NaN and infinities as None (JSON has no NaN; an empty CSV cell)."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _csv_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False, default=_jsonable)
    return repr(float(v)) if isinstance(v, float) else str(v)  # repr: exact; np.float64 too


def _write_atomic(path: Path, text: str) -> None:
    """Write under a temporary name, then rename: a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(text.encode("utf-8"))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_items(out: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """`items.jsonl` (one JSON object per row) and `items.csv` (the same columns, in the first
    row's key order; labels as JSON text, missing values empty) in `out`."""
    out = Path(out)
    rows = [{k: _finite(v) for k, v in row.items()} for row in rows]
    columns = list(rows[0]) if rows else []
    _write_atomic(
        out / "items.jsonl",
        "".join(json.dumps(r, ensure_ascii=False, default=_jsonable) + "\n" for r in rows),
    )
    buf = io.StringIO()
    # CRLF rows (RFC 4180; the default): fields holding \r or \n are then quoted, which they
    # are not with a "\n" terminator, and a generated report may hold either
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _csv_cell(v) for k, v in r.items()})
    _write_atomic(out / "items.csv", buf.getvalue())
    films = sum(1 for r in rows for c in r if c.startswith("film_") and r[c])
    log.info("wrote %d items to %s (items.jsonl, items.csv; %d films)", len(rows), out, films)


# --------------------------------------------------------------------------------------------
# Reports of the results
# --------------------------------------------------------------------------------------------

MISMATCHED = "mismatched inputs (control)"
PROB_ROW = "model's p(yes) to the presence question (deterministic)"


def _rows(rows: dict[str, Any]) -> dict[str, Any]:
    """Table rows that exist (results hold auroc)."""
    return {k: v for k, v in rows.items() if v and "auroc" in v}


def markdown(results: dict[str, Any], title: str = "ours") -> str:
    """The evaluation as Markdown: the paper-layout tables with intervals and controls,
    per-class detail, FID, the reconstructions and VQA."""
    fmt = metrics.fmt_ci
    lines = [f"# Evaluation ({results['num_items']} test items)", ""]
    boot = results["settings"].get("bootstrap", {})
    if boot.get("resamples"):
        lines += [
            f"Figures: value [95% interval], percentile bootstrap over test items "
            f"({boot['resamples']} resamples, seed {results['settings']['seed']}; FID "
            f"{boot['fid_resamples']}). Controls: each item's input swapped for another test "
            f"item's (a derangement); a model that reads its input falls to about chance there.",
            "",
        ]
    c2r = results.get("cxr_to_report") or {}
    prob = results.get("cxr_to_report_prob") or {}
    if "auroc" in c2r or "auroc" in prob:
        k = results["settings"]["num_reports"]
        rows = _rows(
            {
                f"{title}: fraction of {k} sampled reports": c2r,
                f"{title}: {PROB_ROW}": prob,
                f"sampled reports, {MISMATCHED}": c2r.get("mismatched"),
                f"p(yes), {MISMATCHED}": prob.get("mismatched"),
            }
        )
        lines += [metrics.markdown_table(rows, "CXR-to-report"), ""]
        if "auroc" in c2r:
            lines += [f"Per class, {k} sampled reports:", "", metrics.per_class_table(c2r), ""]
        if "auroc" in prob:
            lines += ["Per class, p(yes):", "", metrics.per_class_table(prob), ""]
            qs = "; ".join(f'{c}: "{q}"' for c, q in prob["questions"].items())
            lines += [f"Presence questions: {qs}", ""]
        if c2r.get("greedy_exact_match") is not None:
            em = fmt(c2r["greedy_exact_match"], c2r.get("greedy_exact_match_ci95"))
            lines += [
                f"Greedy reports whose six labels all equal the reference's: {em} "
                f"({c2r['greedy_count']} films)",
                "",
            ]
    lines += report_generation_table(results, title)
    lines += _text_lines(results.get("report_text"), markdown=True)
    lines += report_models.markdown_lines(results.get("report_models"))
    r2c = results.get("report_to_cxr") or {}
    if "auroc" in r2c:
        rows = _rows(
            {
                title: r2c,
                MISMATCHED: r2c.get("mismatched"),
                "CXR classifier on the real films (ceiling)": r2c.get("real_films"),
            }
        )
        lines += [
            metrics.markdown_table(rows, "Report-to-CXR (CXR classifier on generated films)"),
            "",
            metrics.per_class_table(r2c),
            "",
        ]
        if "fid" in r2c:
            lines += [
                f"FID (classifier features, generated vs real): "
                f"{fmt(r2c['fid'], r2c.get('fid_ci95'))} "
                f"(LLM-CXR published on MIMIC-CXR: {metrics.PAPER_FID['LLM-CXR']})",
                "",
            ]
    lines += _film_lines(results.get("films"), markdown=True)
    rec = results.get("reconstruction") or {}
    if "psnr" in rec:
        lines += [
            f"### VQ-GAN reconstructions of the test films ({rec['films']} films)",
            "",
            f"PSNR: {fmt(rec['psnr'], rec.get('psnr_ci95'), '{:.2f}')} dB",
            "",
        ]
        if "ssim" in rec or "ssim_skipped" in rec:
            ssim = rec.get("ssim_skipped") and f"skipped: {rec['ssim_skipped']}"
            ssim = ssim or f"{fmt(rec['ssim'], rec.get('ssim_ci95'), '{:.4f}')}"
            lines += [f"SSIM (Gaussian window 11, sigma 1.5, as pytorch-msssim): {ssim}", ""]
        if "kept" in rec:
            lines += ["| Films | AUROC micro | AUROC macro |", "|---|---:|---:|"]
            for name, key in (("real", "real_films"), ("reconstructed", "reconstructions")):
                a, ci = rec[key]["auroc"], rec[key].get("auroc_ci95", {})
                lines.append(
                    f"| {name} | {fmt(a['micro'], ci.get('micro'))} | "
                    f"{fmt(a['macro'], ci.get('macro'))} |"
                )
            kept, ci = rec["kept"], rec.get("kept_ci95", {})
            lines.append(
                f"| kept (reconstructed / real) | {fmt(kept['micro'], ci.get('micro'))} | "
                f"{fmt(kept['macro'], ci.get('macro'))} |"
            )
            lines.append("")
    v = results.get("vqa")
    if v:
        lines += [
            f"VQA accuracy: {fmt(v['overall'], v.get('overall_ci95'))} over {v['count']} "
            f"questions (LLM-CXR published on MIMIC-CXR: {metrics.PAPER_VQA['LLM-CXR']:.3f})",
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


def _averages(res: dict[str, Any], metric: str) -> str:
    ci = res.get(f"{metric}_ci95") or {}
    return ", ".join(
        f"{a} {metrics.fmt_ci(res[metric].get(a), ci.get(a))}" for a in metrics.AVERAGES
    )


def _text_lines(text: dict[str, Any] | None, markdown: bool = False) -> list[str]:
    """The report text metrics as one line (a table and a blank line for Markdown)."""
    if not text:
        return []
    names = [f"BLEU-{k}" for k in range(1, 5)] + ["ROUGE-L", "CIDEr-D"]
    keys = [f"bleu_{k}" for k in range(1, 5)] + ["rouge_l", "cider_d"]
    what = f"{text['source']} reports against the references, {text['count']} films"
    if not markdown:
        figures = ", ".join(f"{n} {text[k]:.3f}" for n, k in zip(names, keys, strict=True))
        return [f"report text ({what}): {figures}"]
    return [
        f"Report text metrics ({what}; pycocoevalcap's BLEU, ROUGE-L and CIDEr-D):",
        "",
        "| " + " | ".join(names) + " |",
        "|" + "---:|" * len(names),
        "| " + " | ".join(f"{text[k]:.3f}" for k in keys) + " |",
        "",
    ]


NOT_RUN = "—"  # a metric of ours that did not run, in the report-generation table


def _ours_report_figures(
    results: dict[str, Any],
) -> tuple[dict[str, tuple[float, Any]], dict[str, str]]:
    """Our figures for the report-generation table, as fractions: column key -> (value,
    interval or None); and metric name -> why it was skipped."""
    text = results.get("report_text") or {}
    rm = results.get("report_models") or {}
    got: dict[str, tuple[float, Any]] = {}
    skipped: dict[str, str] = {}
    for key, src in (("bleu_1", "bleu_1"), ("bleu_4", "bleu_4"), ("rouge_l", "rouge_l")):
        if src in text:
            got[key] = (text[src], None)
    if "cider_d" in text:
        got["cider"] = (text["cider_d"], None)
    if not text:
        skipped["BLEU, ROUGE-L, CIDEr"] = "no generated report"
    parts = (
        ("bertscore", "BERTScore", {"bertscore": "f1"}),
        ("radgraph", "RadGraph F1", {"radgraph": "partial"}),
        ("chexbert", "F1-CheXbert", {k: k for k in report_models.F1_KEYS}),
    )
    for name, title, keys in parts:
        r = rm.get(name) or {"skipped": "no generated report"}
        if "skipped" in r:
            skipped[title] = r["skipped"]
            continue
        for key, src in keys.items():
            if src in r:
                got[key] = (r[src], r.get(f"{src}_ci95"))
    return got, skipped


def report_generation_table(results: dict[str, Any], title: str = "ours") -> list[str]:
    """The report-generation table in the field's usual layout (`metrics.REPORT_TABLE_COLUMNS`,
    in percent): our row with its intervals, then the figures others published
    (`metrics.PUBLISHED_REPORT_ROWS`, empty where a paper does not report a metric); a metric of
    ours that did not run shows as "—", with the reasons listed under the table."""
    if not results.get("report_text") and not results.get("report_models"):
        return []
    got, skipped = _ours_report_figures(results)
    cols = metrics.REPORT_TABLE_COLUMNS

    def pct(value: float, ci: Any) -> str:
        scaled = None if ci is None else [None if x is None else 100 * x for x in ci]
        return metrics.fmt_ci(100 * value, scaled, "{:.1f}")

    ours = [pct(*got[key]) if key in got else NOT_RUN for key, _ in cols]
    lines = [
        "### Report generation",
        "",
        "| Model | " + " | ".join(h for _, h in cols) + " |",
        "|---|" + "---:|" * len(cols),
        f"| {title} | " + " | ".join(ours) + " |",
    ]
    for row in metrics.PUBLISHED_REPORT_ROWS:
        cells = [f"{row['figures'][key]:.1f}" if key in row["figures"] else "" for key, _ in cols]
        name = f"{row['name']} ({metrics.PUBLISHED_REPORT_NOTE})"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    rm = results.get("report_models") or {}
    source = (results.get("report_text") or rm).get("source") or "generated"
    bert, chex = rm.get("bertscore") or {}, rm.get("chexbert") or {}
    how = f"Figures in percent. {title}: the {source} reports against the references, "
    how += "value [95% interval]; BLEU, ROUGE-L and CIDEr (CIDEr-D) are corpus figures without "
    how += "an interval; RadGraph F1 is its partial reward; BERTScore is F1"
    if "layer" in bert:
        how += f" (layer {bert['layer']}{', rescaled' if bert.get('rescaled') else ''})"
    if "micro_f1_14" in chex:
        how += "; CheXbert's uncertain labels counted as "
        how += "positive" if chex.get("uncertain_positive") else "negative"
    notes = [how + "."]
    if skipped:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items())
        notes.append(f"{NOT_RUN}: not computed here. {reasons}.")
    by_source: dict[str, list[str]] = {}
    for row in metrics.PUBLISHED_REPORT_ROWS:
        by_source.setdefault(row["source"], []).append(row["name"])
    cited = "; ".join(f"{' / '.join(names)}: {src}" for src, names in by_source.items())
    notes.append(f"Published rows (figures on MIMIC-CXR, not on the data evaluated here): {cited}.")
    for note in notes:
        lines += ["", note]
    return [*lines, ""]


FILM_ROWS = (
    ("fid_xrv", "FID, torchxrayvision DenseNet-121 features (generated vs real)"),
    ("ms_ssim_real", "MS-SSIM, generated vs the real film of the same report"),
    ("ms_ssim_real_mismatched", f"MS-SSIM, generated vs real, {MISMATCHED}"),
    ("diversity", "diversity: MS-SSIM between films of the same report (lower: more diverse)"),
    ("diversity_distinct", "MS-SSIM between films of distinct reports (reference)"),
)


def _film_lines(films: dict[str, Any] | None, markdown: bool = False) -> list[str]:
    """The generated films' figures: a table with a row per figure, skipped ones with their
    reason (Markdown), or one line per figure."""
    if not films:
        return []
    rows = []
    for key, name in FILM_ROWS:
        if key in films:
            form = "{:.2f}" if key == "fid_xrv" else "{:.4f}"
            value = metrics.fmt_ci(films[key], films.get(f"{key}_ci95"), form)
        elif key in films.get("skipped", {}):
            value = f"skipped: {films['skipped'][key]}"
        else:
            continue
        rows.append((name, value))
    if not markdown:
        return [f"{name}: {value}" for name, value in rows]
    out = ["### Film metrics", "", "| Figure | Value [95% interval] |", "|---|---|"]
    out += [f"| {name} | {value} |" for name, value in rows]
    out.append("")
    if "ms_ssim_scales" in films:
        w = ", ".join(f"{x:.4f}" for x in films["ms_ssim_weights"])
        out += [f"MS-SSIM: {films['ms_ssim_scales']} scales, weights {w}.", ""]
    if "diversity_source" in films:
        out += [f"Diversity pairs: {films['diversity_source']}.", ""]
    return out


def summary_lines(results: dict[str, Any]) -> list[str]:
    """The figures as plain-text lines, each with its 95% interval: both CXR-to-report scores,
    report-to-CXR (with the real-films ceiling), their mismatched-input controls, FID, VQA and
    the VQ-GAN reconstructions."""
    fmt = metrics.fmt_ci
    settings = results.get("settings", {})
    lines: list[str] = []

    def scored(name: str, res: dict[str, Any] | None, control: str) -> None:
        if not res or "auroc" not in res:
            return
        lines.append(f"{name}: AUROC {_averages(res, 'auroc')}")
        lines.append(f"{name}: F1 {_averages(res, 'f1')}")
        mm = res.get("mismatched")
        if mm:
            ci = mm.get("auroc_ci95") or {}
            lines.append(
                f"  control, {control}: AUROC micro {fmt(mm['auroc']['micro'], ci.get('micro'))}"
                f", macro {fmt(mm['auroc']['macro'], ci.get('macro'))}"
            )

    k = settings.get("num_reports", "k")
    c2r = results.get("cxr_to_report") or {}
    scored(f"CXR-to-report ({k} sampled reports)", c2r, "mismatched films")
    scored(
        "CXR-to-report (model's p(yes), deterministic)",
        results.get("cxr_to_report_prob"),
        "mismatched films",
    )
    if c2r.get("greedy_exact_match") is not None:
        em = fmt(c2r["greedy_exact_match"], c2r.get("greedy_exact_match_ci95"))
        lines.append(f"greedy reports, all six labels right: {em} ({c2r['greedy_count']} films)")
    lines += _text_lines(results.get("report_text"))
    lines += report_models.summary_line(results.get("report_models"))
    r2c = results.get("report_to_cxr") or {}
    kimg = settings.get("num_images", "k")
    scored(f"report-to-CXR ({kimg} generated films each)", r2c, "mismatched reports")
    real = r2c.get("real_films")
    if real and "auroc" in real:
        lines.append(f"  classifier on the real films (ceiling): AUROC {_averages(real, 'auroc')}")
    if "fid" in r2c:
        lines.append(f"FID (classifier features): {fmt(r2c['fid'], r2c.get('fid_ci95'))}")
    lines += _film_lines(results.get("films"))
    v = results.get("vqa")
    if v:
        lines.append(
            f"VQA accuracy: {fmt(v['overall'], v.get('overall_ci95'))} over {v['count']} questions"
        )
    rec = results.get("reconstruction") or {}
    if "psnr" in rec:
        lines.append(
            f"VQ-GAN reconstruction PSNR: {fmt(rec['psnr'], rec.get('psnr_ci95'), '{:.2f}')} dB "
            f"over {rec['films']} films"
        )
    if "ssim" in rec:
        lines.append(
            f"VQ-GAN reconstruction SSIM: {fmt(rec['ssim'], rec.get('ssim_ci95'), '{:.4f}')}"
        )
    if "kept" in rec:
        ci = rec.get("kept_ci95", {})
        parts = []
        for avg in ("micro", "macro"):
            a_rec = rec["reconstructions"]["auroc"][avg]
            a_real = rec["real_films"]["auroc"][avg]
            parts.append(
                f"{avg} {fmt(rec['kept'][avg], ci.get(avg))} "
                f"({metrics.fmt_ci(a_rec)} / {metrics.fmt_ci(a_real)})"
            )
        lines.append(
            "clinical information kept (classifier AUROC, reconstructions / real films): "
            + ", ".join(parts)
        )
    return lines
