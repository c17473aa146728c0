"""How the evaluation forms its scores: labels of references and fractions of sampled reports."""

import numpy as np

from llmcxr_jax.eval import evaluate, metrics


def test_report_scores_are_the_fraction_of_sampled_reports_stating_each_class():
    generated = [
        ["Moderate left pleural effusion.", "No pleural effusion. Lungs are clear."],
        ["Small right pneumothorax.", "Right apical pneumothorax.", "Lungs are clear."],
    ]
    scores = evaluate.report_scores(generated)
    col = {c: i for i, c in enumerate(metrics.PAPER_CLASSES)}
    assert scores.shape == (2, 6)
    assert scores[0, col["Pleural Effusion"]] == 0.5  # 1 of 2 reports
    assert scores[1, col["Pneumothorax"]] == 2 / 3  # 2 of 3
    assert scores[0, col["Pneumothorax"]] == 0.0
    assert scores[1, col["Pleural Effusion"]] == 0.0


def test_uncertain_counts_only_when_asked():
    text = ["Possible small left pleural effusion."]
    i = metrics.PAPER_CLASSES.index("Pleural Effusion")
    assert evaluate.binary_labels(text)[0, i] == 0
    assert evaluate.binary_labels(text, uncertain_positive=True)[0, i] == 1


def test_scored_uses_half_as_the_f1_threshold():
    y = np.array([[1, 0, 1, 0, 0, 1], [0, 1, 0, 1, 1, 0]], np.int8)
    s = np.array([[0.5, 0.25, 0.75, 0.0, 0.0, 1.0], [0.0, 0.5, 0.25, 1.0, 0.75, 0.0]])
    r = evaluate._scored(y, s)
    # predictions (s >= 0.5): row 0 -> classes 0, 2, 5 (all right); row 1 -> 1, 3, 4 (all right)
    assert r["f1"]["micro"] == 1.0
    assert r["auroc"]["micro"] == metrics.roc_auc(y.ravel(), s.ravel())
