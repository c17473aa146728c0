"""Evaluation metrics for LLM-CXR's three tasks, in plain numpy, plus the paper's published rows.

- CXR-to-report: the generated report is labelled (six classes, `PAPER_CLASSES`) and compared
  with the reference report's labels: AUROC (`multilabel_auroc`) and F1 (`multilabel_f1`), each
  micro / macro / weighted. Both match scikit-learn (tests check it) but need no scikit-learn,
  and they report classes whose AUROC is undefined (one label only) as nan instead of raising,
  which small evaluation sets hit often.
- Report-to-CXR: FID (`frechet_distance`, `fid_from_features`) with an exact matrix square root.
- VQA: exact-match accuracy after answer normalisation, overall and per category
  (`vqa_accuracy`).

`PAPER_ROWS`, `PAPER_FID` and `PAPER_VQA` are the figures published in the LLM-CXR paper on
MIMIC-CXR, kept so our tables can show them next to ours; they are not computed here, and our
numbers on other data (e.g. phantoms) are not comparable to them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from llmcxr_jax.data.labeler import PAPER_CLASSES  # LLM-CXR's six evaluation classes

AVERAGES = ("micro", "macro", "weighted")

# Published in the LLM-CXR paper (CXR-to-report, MIMIC-CXR test set); not computed by this code.
PAPER_DATASET = "MIMIC-CXR"
PAPER_ROWS: dict[str, dict[str, dict[str, float]]] = {
    "LLM-CXR": {
        "auroc": {"micro": 0.654, "macro": 0.586, "weighted": 0.628},
        "f1": {"micro": 0.414, "macro": 0.283, "weighted": 0.408},
    },
    "UniXGen": {
        "auroc": {"micro": 0.661, "macro": 0.588, "weighted": 0.634},
        "f1": {"micro": 0.434, "macro": 0.280, "weighted": 0.415},
    },
    "XrayGPT": {
        "auroc": {"micro": 0.595, "macro": 0.552, "weighted": 0.576},
        "f1": {"micro": 0.314, "macro": 0.227, "weighted": 0.320},
    },
}
# Published: report-to-CXR FID and VQA accuracy (fraction, 56.7%) of LLM-CXR on MIMIC-CXR.
PAPER_FID: dict[str, float] = {"LLM-CXR": 20.22}
PAPER_VQA: dict[str, float] = {"LLM-CXR": 0.567}


# --- AUROC ----------------------------------------------------------------------------------------


def _binary(y: np.ndarray, name: str) -> np.ndarray:
    """0/1 (or bool) labels as bool; anything else is a caller bug (e.g. -1 uncertain labels)."""
    y = np.asarray(y)
    if y.dtype != bool and not np.isin(y, (0, 1)).all():
        raise ValueError(f"{name} must contain only 0/1, got values {np.unique(y)[:10]}")
    return y.astype(bool)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of the ranks they span (as scipy's rankdata)."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    starts = ends - counts
    return ((starts + ends + 1) / 2.0)[inverse.reshape(-1)]


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Binary AUROC as the Mann-Whitney U statistic over average ranks.

    Rank form, not a threshold sweep: exact with ties (a tied positive/negative pair counts 1/2)
    and O(n log n). Equals sklearn's roc_auc_score; nan when only one class is present, where
    AUROC is undefined (sklearn raises instead).
    """
    y = _binary(y_true, "y_true").reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"y_true and scores differ in size: {y.shape} vs {s.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contain nan")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _check_multilabel(
    y_true: np.ndarray, other: np.ndarray, class_names: Sequence[str], other_name: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    y = _binary(y_true, "y_true")
    o = np.asarray(other)
    if y.ndim != 2 or y.shape != o.shape:
        raise ValueError(f"expected y_true and {other_name} [N, C], got {y.shape} and {o.shape}")
    names = list(class_names)
    if len(names) != y.shape[1]:
        raise ValueError(f"{len(names)} class names for {y.shape[1]} columns")
    return y, o, names


def multilabel_auroc(
    y_true: np.ndarray, scores: np.ndarray, class_names: Sequence[str] = PAPER_CLASSES
) -> dict[str, Any]:
    """Micro, macro and weighted AUROC over [N, C] labels, plus AUROC per class.

    macro and weighted average only the classes whose AUROC is defined (both labels present),
    weighted by positive count, so one class missing from a small set does not void the table;
    where every class is defined they equal sklearn's roc_auc_score(average=...).
    """
    y, s, names = _check_multilabel(y_true, scores, class_names, "scores")
    s = s.astype(np.float64)
    per = np.array([roc_auc(y[:, c], s[:, c]) for c in range(y.shape[1])], dtype=np.float64)
    defined = ~np.isnan(per)
    pos = y.sum(axis=0).astype(np.float64)
    if defined.any():
        macro = float(per[defined].mean())
        weighted = float(np.average(per[defined], weights=pos[defined]))
    else:
        macro = weighted = float("nan")
    return {
        "micro": roc_auc(y.reshape(-1), s.reshape(-1)),
        "macro": macro,
        "weighted": weighted,
        "per_class": {n: float(v) for n, v in zip(names, per, strict=True)},
    }


# --- F1 -------------------------------------------------------------------------------------------


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """2TP / (2TP + FP + FN), 0 where nothing was predicted or true (zero_division=0)."""
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0).astype(np.float64)


def multilabel_f1(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str] = PAPER_CLASSES
) -> dict[str, Any]:
    """Micro, macro and weighted F1 over [N, C] 0/1 labels, plus F1 and support per class.

    Undefined ratios count as 0 (sklearn's zero_division=0), so a class never predicted and
    never true scores 0 and still counts in macro; weighted uses support (positives) and is 0
    when there are none. Equals sklearn's f1_score(average=..., zero_division=0).
    """
    y, p, names = _check_multilabel(y_true, y_pred, class_names, "y_pred")
    p = _binary(p, "y_pred")
    tp = (y & p).sum(axis=0).astype(np.float64)
    fp = (~y & p).sum(axis=0).astype(np.float64)
    fn = (y & ~p).sum(axis=0).astype(np.float64)
    per = _f1(tp, fp, fn)
    support = y.sum(axis=0)
    total = support.sum()
    micro = float(_f1(tp.sum(), fp.sum(), fn.sum()))
    weighted = float((per * support).sum() / total) if total > 0 else 0.0
    return {
        "micro": micro,
        "macro": float(per.mean()) if per.size else 0.0,
        "weighted": weighted,
        "per_class": {n: float(v) for n, v in zip(names, per, strict=True)},
        "support": {n: int(v) for n, v in zip(names, support, strict=True)},
    }


# --- FID ------------------------------------------------------------------------------------------


def _clip_noise(eigenvalues: np.ndarray) -> np.ndarray:
    """Eigenvalues within rounding of 0 (|l| <= D * eps * max|l|, as numpy's matrix_rank) set to
    0: a singular covariance's zero eigenvalues come out as +-1e-16 and their square roots
    (1e-8 each) would otherwise add up to visible noise."""
    scale = float(np.abs(eigenvalues).max(initial=0.0))
    tol = eigenvalues.shape[0] * np.finfo(np.float64).eps * scale
    return np.where(eigenvalues > tol, eigenvalues, 0.0)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    |mu1 - mu2|^2 + tr(s1) + tr(s2) - 2 tr sqrt(s1 s2). s1 s2 is not symmetric, which is why the
    usual scipy.linalg.sqrtm route (Schur form, iterative, complex parts to discard, a
    nan-prone fix-up for singular covariances) is only approximate. Its eigenvalues are those
    of the symmetric PSD matrix r s2 r with r = sqrt(s1), and both r (from eigh of s1) and those
    eigenvalues (eigvalsh) come from symmetric eigendecompositions: exact up to rounding, real,
    and stable for singular covariances (N < D). Eigenvalues within rounding of 0 (negative
    ones included) count as 0. All in float64.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    s1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    s2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"shapes differ: mu1 {mu1.shape}, mu2 {mu2.shape}, s1 {s1.shape}, s2 {s2.shape}"
        )
    s1 = (s1 + s1.T) / 2.0
    s2 = (s2 + s2.T) / 2.0
    lam, u = np.linalg.eigh(s1)
    r = (u * np.sqrt(_clip_noise(lam))) @ u.T
    m = r @ s2 @ r
    ev = np.linalg.eigvalsh((m + m.T) / 2.0)
    tr_sqrt = float(np.sqrt(_clip_noise(ev)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)


def fid_from_features(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """FID between two feature sets [N, D] and [M, D]: means and unbiased covariances."""
    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected [N, D] and [M, D] features, got {a.shape} and {b.shape}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("need at least 2 samples per set for a covariance")
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    return frechet_distance(a.mean(axis=0), cov_a, b.mean(axis=0), cov_b)


# --- VQA ------------------------------------------------------------------------------------------

_TRAILING_PUNCT = ".,;:!?"
_ITEM_SPLIT = re.compile(r",|\band\b")


def _normalize(text: str) -> str:
    """Lower-case, trailing punctuation dropped, whitespace collapsed."""
    return " ".join(str(text).lower().strip().rstrip(_TRAILING_PUNCT).split())


def _answer_key(text: str) -> frozenset[str]:
    """An answer as the set of its comma/"and"-separated items, so that "edema and pleural
    effusion" matches "Pleural effusion, edema." (finding lists have no order); a one-item
    answer is a one-element set, i.e. plain exact match."""
    items = (_normalize(part) for part in _ITEM_SPLIT.split(_normalize(text)))
    return frozenset(item for item in items if item)


def vqa_accuracy(
    predictions: Sequence[str], answers: Sequence[str], categories: Sequence[str]
) -> dict[str, Any]:
    """Exact-match accuracy after normalisation, overall and per category (nan where empty).

    Generated answers differ from references in case, final full stop and list order without
    being wrong, hence the normalisation and the set comparison of finding lists.
    """
    if not len(predictions) == len(answers) == len(categories):
        raise ValueError(
            f"lengths differ: {len(predictions)} predictions, {len(answers)} answers, "
            f"{len(categories)} categories"
        )
    hits: dict[str, int] = {}
    counts: dict[str, int] = {}
    for pred, ans, cat in zip(predictions, answers, categories, strict=True):
        counts[cat] = counts.get(cat, 0) + 1
        hits[cat] = hits.get(cat, 0) + int(_answer_key(pred) == _answer_key(ans))
    n = len(predictions)
    return {
        "overall": sum(hits.values()) / n if n else float("nan"),
        "per_category": {c: hits[c] / counts[c] for c in counts},
        "count": n,
        "per_category_count": dict(counts),
    }


# --- tables ---------------------------------------------------------------------------------------


def _fmt(x: Any) -> str:
    """3 decimals; nan or missing as n/a."""
    if x is None:
        return "n/a"
    x = float(x)
    return "n/a" if math.isnan(x) else f"{x:.3f}"


def markdown_table(
    ours: Mapping[str, Mapping[str, Mapping[str, Any]]], title: str, include_paper: bool = True
) -> str:
    """The paper's CXR-to-report table: our rows first, then the published MIMIC-CXR rows.

    `ours` maps a row name to {"auroc": multilabel_auroc(...), "f1": multilabel_f1(...)}.
    """
    header = ["Model"] + [f"{m} {a}" for m in ("AUROC", "F1") for a in AVERAGES]
    rows: list[list[str]] = []
    for name, res in ours.items():
        rows.append(
            [name] + [_fmt(res.get(k, {}).get(a)) for k in ("auroc", "f1") for a in AVERAGES]
        )
    if include_paper:
        for name, res in PAPER_ROWS.items():
            rows.append(
                [f"{name} (published, {PAPER_DATASET})"]
                + [_fmt(res[k][a]) for k in ("auroc", "f1") for a in AVERAGES]
            )
    lines = [f"### {title}", ""] if title else []
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    lines.extend("| " + " | ".join(r) + " |" for r in rows)
    return "\n".join(lines) + "\n"


def per_class_table(result: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per class: AUROC, F1 and, where multilabel_f1 gave it, support (positives)."""
    auroc = result.get("auroc", {}).get("per_class", {})
    f1 = result.get("f1", {})
    f1_per = f1.get("per_class", {})
    support = f1.get("support")
    names = list(dict.fromkeys([*auroc, *f1_per]))
    header = ["Class", "AUROC", "F1"] + (["Support"] if support is not None else [])
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for n in names:
        row = [n, _fmt(auroc.get(n)), _fmt(f1_per.get(n))]
        if support is not None:
            row.append(str(support[n]) if n in support else "n/a")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
