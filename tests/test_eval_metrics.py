"""Evaluation metrics: hand-computed cases, and scikit-learn / scipy as independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
from sklearn.metrics import f1_score, roc_auc_score

from llmcxr_jax.eval import metrics
from llmcxr_jax.eval.metrics import (
    PAPER_CLASSES,
    PAPER_FID,
    PAPER_ROWS,
    PAPER_VQA,
    fid_from_features,
    frechet_distance,
    markdown_table,
    multilabel_auroc,
    multilabel_f1,
    per_class_table,
    roc_auc,
    vqa_accuracy,
)

AVERAGES = ("micro", "macro", "weighted")


def test_paper_classes_match_labeler():
    from llmcxr_jax.data.labels import PAPER_CLASSES as LABELER_CLASSES

    assert PAPER_CLASSES == LABELER_CLASSES


def test_paper_figures():
    assert PAPER_ROWS["LLM-CXR"]["auroc"] == {"micro": 0.654, "macro": 0.586, "weighted": 0.628}
    assert PAPER_ROWS["LLM-CXR"]["f1"] == {"micro": 0.414, "macro": 0.283, "weighted": 0.408}
    assert PAPER_ROWS["UniXGen"]["auroc"] == {"micro": 0.661, "macro": 0.588, "weighted": 0.634}
    assert PAPER_ROWS["UniXGen"]["f1"] == {"micro": 0.434, "macro": 0.280, "weighted": 0.415}
    assert PAPER_ROWS["XrayGPT"]["auroc"] == {"micro": 0.595, "macro": 0.552, "weighted": 0.576}
    assert PAPER_ROWS["XrayGPT"]["f1"] == {"micro": 0.314, "macro": 0.227, "weighted": 0.320}
    assert PAPER_FID == {"LLM-CXR": 20.22}
    assert PAPER_VQA == {"LLM-CXR": 0.567}


# --- AUROC ----------------------------------------------------------------------------------------


def test_roc_auc_by_hand():
    # positives 0.35, 0.8; negatives 0.1, 0.4. Pairs won by the positive:
    # 0.35>0.1 yes, 0.35>0.4 no, 0.8>0.1 yes, 0.8>0.4 yes -> 3 of 4.
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)


def test_roc_auc_ties_by_hand():
    # positives 0.5, 0.9; negatives 0.5, 0.2. Pairs: 0.5 vs 0.5 tie -> 1/2, 0.5>0.2 -> 1,
    # 0.9>0.5 -> 1, 0.9>0.2 -> 1. Total 3.5 / 4 = 0.875.
    y = np.array([0, 1, 0, 1])
    s = np.array([0.5, 0.5, 0.2, 0.9])
    assert roc_auc(y, s) == pytest.approx(0.875)
    # Reversing the scores turns every win into a loss; ties stay 1/2: 0.5 / 4.
    assert roc_auc(y, -s) == pytest.approx(0.125)
    # All scores tied: every pair is a tie.
    assert roc_auc(y, np.zeros(4)) == pytest.approx(0.5)


def test_roc_auc_one_class_is_nan():
    assert math.isnan(roc_auc(np.zeros(5, int), np.arange(5.0)))
    assert math.isnan(roc_auc(np.ones(5, int), np.arange(5.0)))


def test_roc_auc_rejects_non_binary():
    with pytest.raises(ValueError):
        roc_auc(np.array([0, 1, -1]), np.array([0.1, 0.2, 0.3]))


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_roc_auc_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.normal(size=200) + y, 1)  # rounding makes many ties
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def _random_multilabel(seed: int, n: int = 50, c: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < rng.uniform(0.1, 0.6, c)).astype(int)
    y[0], y[1] = 1, 0  # every class has both labels
    scores = np.round(rng.normal(size=(n, c)) + 0.8 * y, 1)  # ties within and across columns
    return y, scores


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_multilabel_auroc_matches_sklearn(seed):
    y, s = _random_multilabel(seed)
    got = multilabel_auroc(y, s, PAPER_CLASSES)
    for avg in AVERAGES:
        assert got[avg] == pytest.approx(roc_auc_score(y, s, average=avg), abs=1e-12), avg
    want = roc_auc_score(y, s, average=None)
    assert list(got["per_class"]) == list(PAPER_CLASSES)
    np.testing.assert_allclose(list(got["per_class"].values()), want, atol=1e-12)


def test_multilabel_auroc_skips_undefined_class():
    # class A: pos 0.9, 0.2 vs neg 0.5, 0.1 -> wins 0.9>0.5, 0.9>0.1, 0.2>0.1 = 3/4
    # class B: pos 0.7 vs neg 0.1, 0.8, 0.3 -> wins 2/3
    # class C: no positives -> nan, left out of macro and weighted
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    s = np.array([[0.9, 0.1, 0.5], [0.5, 0.7, 0.2], [0.2, 0.8, 0.3], [0.1, 0.3, 0.4]])
    got = multilabel_auroc(y, s, ["A", "B", "C"])
    assert got["per_class"]["A"] == pytest.approx(0.75)
    assert got["per_class"]["B"] == pytest.approx(2 / 3)
    assert math.isnan(got["per_class"]["C"])
    assert got["macro"] == pytest.approx((0.75 + 2 / 3) / 2)
    # weights: 2 positives for A, 1 for B
    assert got["weighted"] == pytest.approx((2 * 0.75 + 1 * 2 / 3) / 3)
    assert got["micro"] == pytest.approx(roc_auc_score(y.ravel(), s.ravel()))


def test_multilabel_checks_shapes():
    with pytest.raises(ValueError):
        multilabel_auroc(np.zeros((4, 3), int), np.zeros((4, 2)), ["a", "b"])
    with pytest.raises(ValueError):
        multilabel_f1(np.zeros((4, 3), int), np.zeros((4, 3), int), ["a", "b"])


# --- F1 -------------------------------------------------------------------------------------------


def test_multilabel_f1_by_hand():
    y = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]])
    p = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]])
    # A: TP 1 (row 0), FP 1 (row 2), FN 1 (row 1) -> 2*1 / (2*1 + 1 + 1) = 0.5
    # B: TP 1, FP 0, FN 0 -> 1.0
    # C: TP 0, FP 0, FN 0 -> undefined -> 0 (zero_division=0)
    # micro: TP 2, FP 1, FN 1 -> 4 / 6
    # macro: (0.5 + 1 + 0) / 3 = 0.5
    # weighted by support A 2, B 1, C 0: (2 * 0.5 + 1 * 1) / 3 = 2 / 3
    got = multilabel_f1(y, p, ["A", "B", "C"])
    assert got["per_class"] == pytest.approx({"A": 0.5, "B": 1.0, "C": 0.0})
    assert got["support"] == {"A": 2, "B": 1, "C": 0}
    assert got["micro"] == pytest.approx(4 / 6)
    assert got["macro"] == pytest.approx(0.5)
    assert got["weighted"] == pytest.approx(2 / 3)


def test_multilabel_f1_no_positives_no_predictions():
    got = multilabel_f1(np.zeros((3, 2), int), np.zeros((3, 2), int), ["A", "B"])
    assert got["micro"] == got["macro"] == got["weighted"] == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_multilabel_f1_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random((50, 6)) < rng.uniform(0.05, 0.6, 6)).astype(int)
    p = np.where(rng.random((50, 6)) < 0.7, y, 1 - y)
    if seed == 5:  # a class never true and never predicted, one never predicted
        y[:, 2] = p[:, 2] = 0
        p[:, 4] = 0
    got = multilabel_f1(y, p, PAPER_CLASSES)
    for avg in AVERAGES:
        want = f1_score(y, p, average=avg, zero_division=0)
        assert got[avg] == pytest.approx(want, abs=1e-12), avg
    want = f1_score(y, p, average=None, zero_division=0)
    np.testing.assert_allclose(list(got["per_class"].values()), want, atol=1e-12)
    assert list(got["support"].values()) == y.sum(axis=0).tolist()


# --- FID ------------------------------------------------------------------------------------------


def _fd_sqrtm(mu1, s1, mu2, s2):
    """The usual FID formula with scipy's sqrtm, as an independent reference."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_diagonal_by_hand():
    # |mu1 - mu2|^2 = 1 + 4 = 5; per dimension a + b - 2 sqrt(ab): 1 + 4 - 4 = 1, 4 + 9 - 12 = 1
    got = frechet_distance(
        np.array([0.0, 0.0]), np.diag([1.0, 4.0]), np.array([1.0, 2.0]), np.diag([4.0, 9.0])
    )
    assert got == pytest.approx(7.0, abs=1e-12)


def test_frechet_identity_by_hand():
    # s1 = I: tr sqrt(s2) = sqrt(1) + sqrt(3) (eigenvalues of [[2,1],[1,2]] are 1 and 3);
    # FD = tr I + tr s2 - 2 tr sqrt(s2) = 2 + 4 - 2 (1 + sqrt 3) = 4 - 2 sqrt 3
    z = np.zeros(2)
    got = frechet_distance(z, np.eye(2), z, np.array([[2.0, 1.0], [1.0, 2.0]]))
    assert got == pytest.approx(4 - 2 * math.sqrt(3), abs=1e-12)


def test_frechet_non_commuting_by_hand():
    z = np.zeros(2)
    # s1 = diag(4, 1), s2 = [[1,1],[1,1]] (they do not commute). s1 s2 = [[4,4],[1,1]] has trace 5
    # and determinant 0, so eigenvalues 5 and 0: tr sqrt(s1 s2) = sqrt 5.
    # FD = 5 + 2 - 2 sqrt 5.
    s1, s2 = np.diag([4.0, 1.0]), np.ones((2, 2))
    assert not np.allclose(s1 @ s2, s2 @ s1)
    assert frechet_distance(z, s1, z, s2) == pytest.approx(7 - 2 * math.sqrt(5), abs=1e-12)
    # s1 = [[1,0],[0,0]] (singular), s2 = [[2,1],[1,2]]: s1 s2 = [[2,1],[0,0]], eigenvalues 2, 0:
    # FD = 1 + 4 - 2 sqrt 2
    s1, s2 = np.diag([1.0, 0.0]), np.array([[2.0, 1.0], [1.0, 2.0]])
    assert frechet_distance(z, s1, z, s2) == pytest.approx(5 - 2 * math.sqrt(2), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_matches_sqrtm(seed):
    rng = np.random.default_rng(seed)
    d = 16
    a, b = rng.normal(size=(d, 3 * d)), rng.normal(size=(d, 3 * d))
    s1, s2 = a @ a.T / (3 * d), b @ b.T / (3 * d) + 0.1 * np.eye(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    want = _fd_sqrtm(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-6)


def test_fid_from_features():
    rng = np.random.default_rng(0)
    fa = rng.normal(size=(200, 5))
    fb = rng.normal(size=(150, 5)) @ rng.normal(size=(5, 5)) + 0.5
    want = _fd_sqrtm(fa.mean(0), np.cov(fa.T), fb.mean(0), np.cov(fb.T))
    got = fid_from_features(fa, fb)
    assert got == pytest.approx(want, rel=1e-6)
    assert got == pytest.approx(fid_from_features(fb, fa), rel=1e-10)  # symmetric
    assert abs(fid_from_features(fa, fa)) < 1e-9 * np.trace(np.cov(fa.T))
    # N < D: singular covariances, still finite and ~0 against itself
    few = rng.normal(size=(4, 10))
    assert abs(fid_from_features(few, few)) < 1e-9 * np.trace(np.cov(few.T))


def test_fid_one_dimensional():
    # 1-D: FD = (m1 - m2)^2 + (sd1 - sd2)^2
    a = np.array([[0.0], [2.0]])  # mean 1, unbiased var 2
    b = np.array([[3.0], [5.0], [7.0]])  # mean 5, unbiased var 4
    want = (1 - 5) ** 2 + (math.sqrt(2) - 2) ** 2
    assert fid_from_features(a, b) == pytest.approx(want, abs=1e-12)


# --- VQA ------------------------------------------------------------------------------------------


def test_vqa_accuracy_by_hand():
    preds = ["Yes.", "no", "Pleural effusion, edema", "edema", "  Left   Side! "]
    answers = ["yes", "yes", "edema and pleural effusion", "edema, cardiomegaly", "left side"]
    cats = ["Edema", "Edema", "Other", "Other", "Other"]
    # Edema: hit (case, full stop), miss -> 1/2
    # Other: hit (same set of findings), miss (one finding of two), hit (case, spaces, "!") -> 2/3
    got = vqa_accuracy(preds, answers, cats)
    assert got["count"] == 5
    assert got["overall"] == pytest.approx(3 / 5)
    assert got["per_category"] == pytest.approx({"Edema": 1 / 2, "Other": 2 / 3})
    assert got["per_category_count"] == {"Edema": 2, "Other": 3}


def test_vqa_accuracy_lists_with_oxford_comma():
    got = vqa_accuracy(
        ["edema, effusion, and cardiomegaly"], ["Cardiomegaly, edema and effusion."], ["x"]
    )
    assert got["overall"] == 1.0
    with pytest.raises(ValueError):
        vqa_accuracy(["a"], ["a", "b"], ["x"])


# --- tables ---------------------------------------------------------------------------------------


def _ours_result() -> dict:
    return {
        "auroc": {
            "micro": 0.12345,
            "macro": float("nan"),
            "weighted": 0.5,
            "per_class": {"A": 0.25, "B": float("nan")},
        },
        "f1": {
            "micro": 0.9996,
            "macro": 0.1,
            "weighted": 0.0,
            "per_class": {"A": 0.5, "B": 0.0},
            "support": {"A": 3, "B": 0},
        },
    }


def test_markdown_table():
    table = markdown_table({"ours (phantoms)": _ours_result()}, "CXR-to-report")
    lines = table.strip().splitlines()
    assert "CXR-to-report" in lines[0]
    header = next(line for line in lines if line.startswith("| Model"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols == [
        "Model",
        "AUROC micro",
        "AUROC macro",
        "AUROC weighted",
        "F1 micro",
        "F1 macro",
        "F1 weighted",
    ]
    rows = [line for line in lines if line.startswith("| ") and line != header]
    assert rows[0] == "| ours (phantoms) | 0.123 | n/a | 0.500 | 1.000 | 0.100 | 0.000 |"
    assert (
        "| LLM-CXR (published, MIMIC-CXR) | 0.654 | 0.586 | 0.628 | 0.414 | 0.283 | 0.408 |" in rows
    )
    assert (
        "| UniXGen (published, MIMIC-CXR) | 0.661 | 0.588 | 0.634 | 0.434 | 0.280 | 0.415 |" in rows
    )
    assert (
        "| XrayGPT (published, MIMIC-CXR) | 0.595 | 0.552 | 0.576 | 0.314 | 0.227 | 0.320 |" in rows
    )
    assert len(rows) == 4

    bare = markdown_table({"ours": _ours_result()}, "t", include_paper=False)
    assert "published" not in bare


def test_per_class_table():
    table = per_class_table(_ours_result())
    lines = table.strip().splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == [
        "Class",
        "AUROC",
        "F1",
        "Support",
    ]
    assert "| A | 0.250 | 0.500 | 3 |" in lines
    assert "| B | n/a | 0.000 | 0 |" in lines


def test_tables_from_real_results():
    y, s = _random_multilabel(0)
    result = {"auroc": multilabel_auroc(y, s), "f1": multilabel_f1(y, (s > 0.4).astype(int))}
    table = markdown_table({"ours": result}, "t")
    assert f"| ours | {result['auroc']['micro']:.3f} |" in table
    per = per_class_table(result)
    for name in metrics.PAPER_CLASSES:
        assert f"| {name} | {result['auroc']['per_class'][name]:.3f} |" in per


def test_vqa_hits():
    got = metrics.vqa_hits(["Yes.", "no", "edema, effusion"], ["yes", "yes", "effusion and edema"])
    assert got.tolist() == [True, False, True]


# --- bootstrap intervals and controls -------------------------------------------------------------


def test_bootstrap_ci_mean_of_two_items_by_hand():
    # resamples of [0, 1]: means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4; the 2.5th and
    # 97.5th percentiles of 1,000 of them are therefore 0 and 1
    lo, hi = metrics.bootstrap_ci(np.mean, np.array([0.0, 1.0]), num=1000, seed=0)
    assert (lo, hi) == (0.0, 1.0)
    # at 40%: percentiles 30 and 70 fall among the 0.5s
    lo, hi = metrics.bootstrap_ci(np.mean, [np.array([0.0, 1.0])], num=1000, seed=0, level=0.4)
    assert (lo, hi) == (0.5, 0.5)


def test_bootstrap_ci_constant_seeded_and_paired():
    assert metrics.bootstrap_ci(np.mean, np.full(7, 0.25), num=200, seed=3) == (0.25, 0.25)
    x = np.random.default_rng(0).normal(size=30)
    a = metrics.bootstrap_ci(np.mean, x, num=300, seed=5)
    assert a == metrics.bootstrap_ci(np.mean, x, num=300, seed=5)
    assert a != metrics.bootstrap_ci(np.mean, x, num=300, seed=6)
    assert a[0] < x.mean() < a[1]
    # the same indices for every array: x - x is 0 in every resample
    assert metrics.bootstrap_ci(lambda u, v: np.mean(u - v), [x, x], num=100) == (0.0, 0.0)
    with pytest.raises(ValueError):
        metrics.bootstrap_ci(np.mean, [x, x[:-1]])


def test_bootstrap_ci_drops_nan_resamples():
    # nan unless the resample holds no 0: only [1, 1] (mean 1) survives
    def stat(v):
        return float("nan") if (v == 0).any() else float(v.mean())

    assert metrics.bootstrap_ci(stat, np.array([0.0, 1.0]), num=400, seed=0) == (1.0, 1.0)
    lo, hi = metrics.bootstrap_ci(lambda v: float("nan"), np.arange(3.0), num=10)
    assert math.isnan(lo) and math.isnan(hi)


def test_percentile_interval_by_hand():
    # np.quantile of 0..100 (linear): 2.5 and 97.5; nan values are dropped
    got = metrics.percentile_interval(np.r_[np.arange(101.0), np.nan])
    assert got == pytest.approx((2.5, 97.5), abs=1e-12)
    with pytest.raises(ValueError):
        metrics.percentile_interval([1.0], level=1.0)


def test_bootstrap_counts_match_indices():
    idx = metrics.bootstrap_indices(9, 50, seed=2)
    counts = metrics.bootstrap_counts(9, 50, seed=2)
    assert idx.shape == counts.shape == (50, 9)
    for r in range(50):
        np.testing.assert_array_equal(counts[r], np.bincount(idx[r], minlength=9))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multilabel_bootstrap_equals_the_metrics_on_each_resample(seed):
    y, s = _random_multilabel(seed, n=30)
    y[:, 5] = 0
    y[:4, 5] = 1  # a rare class: some resamples lose its positives (nan AUROC)
    p = (s > 0.5).astype(int)
    num = 60
    got = metrics.multilabel_bootstrap(y, s, p, counts=metrics.bootstrap_counts(30, num, seed))
    for r, idx in enumerate(metrics.bootstrap_indices(30, num, seed)):
        want_a = multilabel_auroc(y[idx], s[idx])
        want_f = multilabel_f1(y[idx], p[idx])
        for avg in AVERAGES:
            np.testing.assert_allclose(got["auroc"][avg][r], want_a[avg], atol=1e-12)
            np.testing.assert_allclose(got["f1"][avg][r], want_f[avg], atol=1e-12)
    ci = metrics.multilabel_ci(y, s, p, num=num, seed=seed)
    for avg in AVERAGES:
        want = metrics.bootstrap_ci(
            lambda a, b, avg=avg: multilabel_auroc(a, b)[avg], [y, s], num=num, seed=seed
        )
        np.testing.assert_allclose(ci["auroc"][avg], want, atol=1e-12)


def test_multilabel_ci_is_fast():
    import time

    rng = np.random.default_rng(0)
    y = (rng.random((300, 6)) < 0.3).astype(int)
    s = rng.normal(size=(300, 6)) + y
    t = time.perf_counter()
    ci = metrics.multilabel_ci(y, s, (s > 0.5).astype(int), num=1000, seed=0)
    assert time.perf_counter() - t < 10.0
    point = multilabel_auroc(y, s)
    for avg in AVERAGES:
        assert ci["auroc"][avg][0] <= point[avg] <= ci["auroc"][avg][1]


def test_derangement_has_no_fixed_point_and_is_a_permutation():
    for n in range(2, 40):
        for seed in range(8):
            d = metrics.derangement(n, seed)
            assert sorted(d.tolist()) == list(range(n))
            assert (d != np.arange(n)).all(), (n, seed)
    np.testing.assert_array_equal(metrics.derangement(10, 4), metrics.derangement(10, 4))
    assert (metrics.derangement(10, 4) != metrics.derangement(10, 5)).any()
    assert metrics.derangement(2, 0).tolist() == [1, 0]
    with pytest.raises(ValueError):
        metrics.derangement(1)


def test_markdown_table_with_intervals():
    res = _ours_result()
    res["auroc_ci95"] = {"micro": [0.1, 0.2], "macro": [float("nan"), float("nan")]}
    res["f1_ci95"] = {"micro": [0.99, 1.0], "macro": [0.05, 0.15], "weighted": [0.0, 0.0]}
    table = markdown_table({"ours": res}, "t", include_paper=False)
    row = next(line for line in table.splitlines() if line.startswith("| ours"))
    assert row == (
        "| ours | 0.123 [0.100, 0.200] | n/a | 0.500 | 1.000 [0.990, 1.000] "
        "| 0.100 [0.050, 0.150] | 0.000 [0.000, 0.000] |"
    )
    assert metrics.fmt_ci(27.123, [26.0, 28.25], "{:.1f}") == "27.1 [26.0, 28.2]"
    assert metrics.fmt_ci(None, [0, 1]) == "n/a"
