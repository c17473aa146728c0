"""Evaluation metrics for LLM-CXR's three tasks, in plain numpy, plus the paper's published rows.

- CXR-to-report: the generated report is labelled (six classes, `PAPER_CLASSES`) and compared
  with the reference report's labels: AUROC (`multilabel_auroc`) and F1 (`multilabel_f1`), each
  micro / macro / weighted. Both match scikit-learn (tests check it) but need no scikit-learn,
  and they report classes whose AUROC is undefined (one label only) as nan instead of raising,
  which small evaluation sets hit often.
- Report-to-CXR: FID (`frechet_distance`, `fid_from_features`) with an exact matrix square root.
- VQA: exact-match accuracy after answer normalisation, overall and per category
  (`vqa_accuracy`).
- Uncertainty: seeded percentile-bootstrap intervals over test items (`bootstrap_ci` for any
  statistic; `multilabel_ci` computes the AUROC and F1 of all resamples at once), and
  `derangement`, the item shuffle without fixed points behind the mismatched-input controls.

`PAPER_ROWS`, `PAPER_FID` and `PAPER_VQA` are the figures published in the LLM-CXR paper on
MIMIC-CXR, kept so our tables can show them next to ours; they are not computed here, and our
numbers on other data (e.g. phantoms) are not comparable to them. `PUBLISHED_REPORT_ROWS`: the
report-generation figures (BLEU, ROUGE-L, RadGraph, F1-CheXbert) of other models, each with its
source, for the "Report generation" table.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from llmcxr_jax.data.labels import PAPER_CLASSES  # LLM-CXR's six evaluation classes

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

# The report-generation table of results.md (`evaluate.report_generation_table`): its columns
# (key, header) in the field's usual order, and figures other papers published on MIMIC-CXR
# findings, in percent, stated once here with their source. A metric a paper does not report is
# left out of its row (an empty cell). LLM-CXR itself published none of these metrics.
REPORT_TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("bleu_1", "BLEU-1"),
    ("bleu_4", "BLEU-4"),
    ("rouge_l", "ROUGE-L"),
    ("cider", "CIDEr"),
    ("bertscore", "BERTScore"),
    ("radgraph", "RadGraph F1"),
    ("micro_f1_14", "F1-CheXbert micro-14"),
    ("macro_f1_14", "F1-CheXbert macro-14"),
    ("micro_f1_5", "F1-CheXbert micro-5"),
    ("macro_f1_5", "F1-CheXbert macro-5"),
)
PUBLISHED_REPORT_ROWS: tuple[dict[str, Any], ...] = (
    {
        "name": "CheXagent",
        "source": "CheXagent's README (findings generation, F1-CheXbert)",
        "figures": {
            "micro_f1_14": 58.0,
            "macro_f1_14": 44.9,
            "micro_f1_5": 62.5,
            "macro_f1_5": 55.3,
        },
    },
    {
        "name": "MAIRA-2",
        "source": "MAIRA-2 paper, read in a summary (secondary; check the paper)",
        "figures": {"rouge_l": 38.4, "bleu_4": 23.4, "radgraph": 34.6},
    },
    *(
        {
            "name": f"{name}, third-party pipeline",
            "source": (
                "one third-party evaluation pipeline for all three models, read in a summary "
                "(secondary; the summary says CheXbert micro / macro, placed here under the 14 "
                "observations)"
            ),
            "figures": dict(
                zip(("rouge_l", "micro_f1_14", "macro_f1_14", "radgraph"), figures, strict=True)
            ),
        }
        for name, figures in (
            ("MAIRA-2", (17.7, 52.1, 35.8, 12.9)),
            ("CheXagent-2", (22.5, 54.5, 38.7, 20.1)),
            ("LLaVA-Rad", (22.2, 53.3, 39.2, 16.8)),
        )
    ),
)
PUBLISHED_REPORT_NOTE = "published, MIMIC-CXR; not comparable with phantom figures"


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


def vqa_hits(predictions: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    """[N] bool: whether each prediction matches its answer (`vqa_accuracy`'s rule)."""
    if len(predictions) != len(answers):
        raise ValueError(f"lengths differ: {len(predictions)} predictions, {len(answers)} answers")
    return np.array(
        [_answer_key(p) == _answer_key(a) for p, a in zip(predictions, answers, strict=True)],
        dtype=bool,
    )


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
    for hit, cat in zip(vqa_hits(predictions, answers), categories, strict=True):
        counts[cat] = counts.get(cat, 0) + 1
        hits[cat] = hits.get(cat, 0) + int(hit)
    n = len(predictions)
    return {
        "overall": sum(hits.values()) / n if n else float("nan"),
        "per_category": {c: hits[c] / counts[c] for c in counts},
        "count": n,
        "per_category_count": dict(counts),
    }


# --- uncertainty ----------------------------------------------------------------------------------


def bootstrap_indices(n: int, num: int, seed: int = 0) -> np.ndarray:
    """[num, n] item indices drawn with replacement (resample r is the items idx[r]), seeded.

    Every bootstrap here draws through this, so figures over the same items with the same seed
    are computed on the same resamples (paired), whichever function computes them.
    """
    if n < 1 or num < 1:
        raise ValueError(f"need n >= 1 items and num >= 1 resamples, got n={n}, num={num}")
    return np.random.default_rng(seed).integers(0, n, size=(num, n))


def bootstrap_counts(n: int, num: int, seed: int = 0) -> np.ndarray:
    """[num, n] float64: how often each item occurs in each resample of `bootstrap_indices`."""
    idx = bootstrap_indices(n, num, seed)
    flat = (idx + n * np.arange(num)[:, None]).ravel()
    return np.bincount(flat, minlength=num * n).reshape(num, n).astype(np.float64)


def percentile_interval(values: Any, level: float = 0.95) -> tuple[float, float]:
    """The central `level` interval of bootstrap values (percentiles (1 - level) / 2 and
    (1 + level) / 2, linearly interpolated); nan values are dropped, (nan, nan) if none remain."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(v, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_ci(
    statistic: Callable[..., float],
    arrays: np.ndarray | Sequence[Any],
    *,
    num: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of `statistic(*arrays)` over items (the first axis).

    Each of `num` resamples draws n item indices with replacement (`bootstrap_indices`), takes
    the same indices from every array (so paired arrays stay paired) and evaluates the
    statistic; resamples where it is nan (e.g. AUROC with one label only) are dropped, and the
    central `level` percentiles of the rest are returned as (lo, hi). A single array may be
    passed as is.
    """
    arrs = (
        [np.asarray(arrays)] if isinstance(arrays, np.ndarray) else [np.asarray(a) for a in arrays]
    )
    if not arrs:
        raise ValueError("bootstrap_ci needs at least one array")
    n = len(arrs[0])
    if any(len(a) != n for a in arrs):
        raise ValueError(f"arrays differ in length: {[len(a) for a in arrs]}")
    values = [float(statistic(*(a[i] for a in arrs))) for i in bootstrap_indices(n, num, seed)]
    return percentile_interval(values, level)


def _resampled_auroc(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROC of one binary column under item weights w [R, m] (resample counts), for all R
    resamples at once: ([R] AUROC, nan where one label is absent; [R] weight of positives).

    A resample repeats item i w_i times, so its Mann-Whitney U is the weighted sum over
    (positive, negative) pairs of [s_pos > s_neg] + [s_pos == s_neg] / 2: summed per tie group
    of the sorted scores, O(R m) after one sort, exactly `roc_auc` of the resampled arrays.
    """
    order = np.argsort(s, kind="stable")
    ss, ys, ws = s[order], y[order], w[:, order]
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
    pos = np.add.reduceat(ws * ys, starts, axis=1)
    neg = np.add.reduceat(ws * ~ys, starts, axis=1)
    neg_below = np.cumsum(neg, axis=1) - neg
    u = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    defined = (n_pos > 0) & (n_neg > 0)
    auc = np.where(defined, u / np.where(defined, n_pos * n_neg, 1.0), np.nan)
    return auc, n_pos


def multilabel_bootstrap(
    y_true: np.ndarray,
    scores: np.ndarray,
    y_pred: np.ndarray | None = None,
    *,
    counts: np.ndarray,
) -> dict[str, dict[str, np.ndarray]]:
    """`multilabel_auroc` (and, given y_pred, `multilabel_f1`) of every resample at once.

    counts [R, N] (from `bootstrap_counts`) says how often each item occurs in each resample.
    Returns {"auroc": {average: [R]}, "f1": {average: [R]}}, values equal to those functions
    applied to the resampled arrays (nan where an AUROC is undefined), vectorised over
    resamples: 1,000 resamples of a few hundred items take well under a second.
    """
    y = _binary(y_true, "y_true")
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 2 or y.shape != s.shape:
        raise ValueError(f"expected y_true and scores [N, C], got {y.shape} and {s.shape}")
    w = np.asarray(counts, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != y.shape[0]:
        raise ValueError(f"counts must be [R, {y.shape[0]}], got {w.shape}")
    c = y.shape[1]
    per, pos = zip(*(_resampled_auroc(y[:, k], s[:, k], w) for k in range(c)), strict=True)
    per_a, pos_a = np.stack(per, axis=1), np.stack(pos, axis=1)
    defined = ~np.isnan(per_a)
    n_def = defined.sum(axis=1)
    per0 = np.where(defined, per_a, 0.0)
    posd = np.where(defined, pos_a, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        macro = np.where(n_def > 0, per0.sum(axis=1) / np.maximum(n_def, 1), np.nan)
        weighted = np.where(n_def > 0, (per0 * posd).sum(axis=1) / posd.sum(axis=1), np.nan)
    micro, _ = _resampled_auroc(y.reshape(-1), s.reshape(-1), np.repeat(w, c, axis=1))
    out: dict[str, dict[str, np.ndarray]] = {
        "auroc": {"micro": micro, "macro": macro, "weighted": weighted}
    }
    if y_pred is not None:
        p = _binary(np.asarray(y_pred), "y_pred")
        if p.shape != y.shape:
            raise ValueError(f"y_pred shape {p.shape} differs from y_true {y.shape}")
        tp = w @ (y & p).astype(np.float64)
        fp = w @ (~y & p).astype(np.float64)
        fn = w @ (y & ~p).astype(np.float64)
        f1 = _f1(tp, fp, fn)
        support = w @ y.astype(np.float64)
        total = support.sum(axis=1)
        out["f1"] = {
            "micro": _f1(tp.sum(axis=1), fp.sum(axis=1), fn.sum(axis=1)),
            "macro": f1.mean(axis=1),
            "weighted": np.where(total > 0, (f1 * support).sum(axis=1) / np.maximum(total, 1), 0.0),
        }
    return out


def multilabel_ci(
    y_true: np.ndarray,
    scores: np.ndarray,
    y_pred: np.ndarray | None = None,
    *,
    num: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, list[float]]]:
    """Bootstrap intervals of the AUROC (and F1) averages: {"auroc": {average: [lo, hi]}, ...},
    the same resamples as `bootstrap_ci` with this seed (`multilabel_bootstrap`)."""
    counts = bootstrap_counts(len(y_true), num, seed)
    values = multilabel_bootstrap(y_true, scores, y_pred, counts=counts)
    return {
        metric: {avg: list(percentile_interval(v, level)) for avg, v in by_avg.items()}
        for metric, by_avg in values.items()
    }


def derangement(n: int, seed: int = 0) -> np.ndarray:
    """A seeded permutation d of range(n) with no fixed point (d[i] != i for all i), n >= 2.

    The items in a random order, each mapped to the next in that order and the last to the
    first: one n-cycle, uniform over the (n - 1)! cyclic permutations (not over all
    derangements, which a control does not need).
    """
    if n < 2:
        raise ValueError(f"a derangement needs n >= 2 items, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    d = np.empty(n, dtype=np.int64)
    d[order] = np.roll(order, -1)
    return d


# --- tables ---------------------------------------------------------------------------------------


def _fmt(x: Any) -> str:
    """3 decimals; nan or missing as n/a."""
    if x is None:
        return "n/a"
    x = float(x)
    return "n/a" if math.isnan(x) else f"{x:.3f}"


def fmt_ci(x: Any, ci: Any = None, fmt: str = "{:.3f}") -> str:
    """A figure and, where given and finite, its interval: `0.812 [0.781, 0.840]`."""
    if x is None or (isinstance(x, (float, np.floating)) and math.isnan(x)):
        return "n/a"
    text = fmt.format(float(x))
    if ci is not None and len(ci) == 2 and all(x is not None for x in ci):
        lo, hi = (float(v) for v in ci)
        if not (math.isnan(lo) or math.isnan(hi)):
            text += f" [{fmt.format(lo)}, {fmt.format(hi)}]"
    return text


def markdown_table(
    ours: Mapping[str, Mapping[str, Mapping[str, Any]]], title: str, include_paper: bool = True
) -> str:
    """The paper's CXR-to-report table: our rows first, then the published MIMIC-CXR rows.

    `ours` maps a row name to {"auroc": multilabel_auroc(...), "f1": multilabel_f1(...)} and,
    optionally, "auroc_ci95" / "f1_ci95" ({average: [lo, hi]}), shown as `0.812 [0.781, 0.840]`.
    """
    header = ["Model"] + [f"{m} {a}" for m in ("AUROC", "F1") for a in AVERAGES]
    rows: list[list[str]] = []
    for name, res in ours.items():
        cells = [name]
        for k in ("auroc", "f1"):
            ci = res.get(f"{k}_ci95") or {}
            cells += [fmt_ci(res.get(k, {}).get(a), ci.get(a)) for a in AVERAGES]
        rows.append(cells)
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
