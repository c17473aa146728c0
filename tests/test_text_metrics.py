"""Report text metrics: hand-computed values, and agreement with pycocoevalcap's scorers."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from llmcxr_jax.eval import text_metrics as tm

PHRASES = [
    "no acute cardiopulmonary process.",
    "the heart size is normal.",
    "heart size is mildly enlarged.",
    "there is no pleural effusion or pneumothorax.",
    "small left pleural effusion.",
    "lungs are clear.",
    "mild pulmonary edema.",
    "right lower lobe consolidation, concerning for pneumonia.",
    "stable mediastinal contours.",
    "no focal consolidation.",
    "patient's endotracheal tube ends 3.5 cm above the carina.",
    "bibasilar atelectasis isn't excluded.",
    "degenerative changes of the thoracic spine.",
    "no evidence of pneumothorax.",
    "(there is) a nasogastric tube in the stomach; its tip isn't seen.",
]


def _reports(rng: random.Random, num: int) -> list[str]:
    return [" ".join(rng.sample(PHRASES, rng.randint(1, 4))).capitalize() for _ in range(num)]


def _random_words(rng: random.Random) -> str:
    vocab = ["a", "b", "c", "d", "e", "f", "the", "lung", "heart", "is", "clear", "normal", "no"]
    return " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 14)))


def test_tokenize_like_ptb_with_punctuation_dropped():
    text = "The patient's heart isn't enlarged (e.g., 3.5 cm), 1,200 ml; x-ray: \"clear\".\nStable."
    assert tm.tokenize(text) == [
        "the", "patient", "'s", "heart", "is", "n't", "enlarged", "e.g.", "3.5", "cm",
        "1,200", "ml", "x-ray", "clear", "stable",
    ]  # fmt: skip
    assert tm.tokenize("") == [] and tm.tokenize(" ... -- ") == []


def test_bleu_and_rouge_by_hand():
    # candidate "the heart is normal" (c = 4), reference "the heart size is normal" (r = 5).
    # Unigrams: all 4 in the reference -> p1 = 4/4. Bigrams: "the heart", "is normal" of 3
    # -> p2 = 2/3. Trigrams: none of 2 -> p3 ~ 0. Brevity penalty exp(1 - r/c) = exp(-0.25).
    got = tm.report_text_metrics(["The heart is normal."], ["The heart size is normal."])
    bp = math.exp(1 - 5 / 4)
    assert got["bleu_1"] == pytest.approx(bp, rel=1e-9)
    assert got["bleu_2"] == pytest.approx(bp * math.sqrt(2 / 3), rel=1e-9)
    assert got["bleu_3"] < 1e-4 and got["bleu_4"] < 1e-3
    # ROUGE-L: LCS "the heart is normal" = 4, P = 4/4, R = 4/5,
    # F = (1 + 1.2^2) P R / (R + 1.2^2 P) = 2.44 * 0.8 / (0.8 + 1.44) = 0.871428...
    assert tm.lcs_length(["a", "b", "c", "d"], ["a", "x", "b", "d"]) == 3
    assert got["rouge_l"] == pytest.approx(2.44 * 0.8 / 2.24, rel=1e-12)
    # one item: IDF = log(1) - log(1) = 0 for every n-gram, so CIDEr-D is 0
    assert got["cider_d"] == 0.0


def test_bleu_uses_the_closest_reference_length_shorter_on_a_tie():
    # c = 4; references of 3 and 5 tokens are equally close: r = 3, so no brevity penalty
    scores, per_item = tm.bleu_tokens([["a", "b", "c", "d"]], [[["a", "b", "c"], list("abcde")]])
    assert scores[0] == pytest.approx(1.0, rel=1e-8) and per_item[0][0] == scores[0]


def test_corpus_bleu_sums_counts_not_sentence_scores():
    # item 1: 2 of 2 unigrams right; item 2: 0 of 2 -> corpus p1 = 2/4, not a mean of 1 and 0
    scores, per_item = tm.bleu_tokens([["a", "b"], ["x", "y"]], [[["a", "b"]], [["c", "d"]]])
    assert scores[0] == pytest.approx(0.5, rel=1e-8)
    assert per_item[0][0] == pytest.approx(1.0, rel=1e-8) and per_item[1][0] < 1e-6


def test_cider_d_of_exact_copies_is_ten():
    # disjoint texts of >= 4 tokens: every n-gram has df 1 of 2 documents, each candidate's
    # vectors equal its reference's (cosine 1 for n = 1..4), equal lengths (no penalty): 10
    gen = ["left lower lobe opacity", "heart size within normal limits"]
    got = tm.text_scores(gen, gen)
    assert got.per_item["cider_d"] == pytest.approx([10.0, 10.0], rel=1e-12)
    assert got.corpus["bleu_4"] == pytest.approx(1.0, rel=1e-8)
    assert got.corpus["rouge_l"] == pytest.approx(1.0)


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="2 generated reports but 1"):
        tm.report_text_metrics(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no reference"):
        tm.report_text_metrics(["a"], [[]])
    with pytest.raises(TypeError):
        tm.report_text_metrics("a b", ["a", "b"])


def _cases() -> tuple[list[str], list[list[str]]]:
    """24 items: real-looking reports (some with two references), random words, an empty
    candidate and candidates equal to their reference."""
    rng = random.Random(0)
    gen, refs = _reports(rng, 12), [[r] for r in _reports(rng, 12)]
    for i in range(0, 12, 4):
        refs[i].append(_reports(rng, 1)[0])
    for _ in range(8):
        gen.append(_random_words(rng))
        refs.append([_random_words(rng) for _ in range(rng.randint(1, 3))])
    gen += ["", PHRASES[0], PHRASES[1] + " " + PHRASES[5], "normal"]
    refs += [[PHRASES[2]], [PHRASES[0]], [PHRASES[1] + " " + PHRASES[5]], ["normal"]]
    return gen, refs


def test_agrees_with_pycocoevalcap():
    pytest.importorskip("pycocoevalcap", reason="pycocoevalcap (the `test` extra) is not installed")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gen, refs = _cases()
    ours = tm.text_scores(gen, refs)
    # pycocoevalcap's scorers take {id: [space-joined tokens]}: feed them our tokens
    res = {i: [" ".join(tm.tokenize(g))] for i, g in enumerate(gen)}
    gts = {i: [" ".join(tm.tokenize(r)) for r in rs] for i, rs in enumerate(refs)}
    bleu, bleu_items = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, rouge_items = Rouge().compute_score(gts, res)
    cider, cider_items = Cider().compute_score(gts, res)
    for k in range(4):
        assert ours.corpus[f"bleu_{k + 1}"] == pytest.approx(bleu[k], abs=1e-9, rel=0)
        np.testing.assert_allclose(ours.per_item[f"bleu_{k + 1}"], bleu_items[k], rtol=0, atol=1e-9)
    assert ours.corpus["rouge_l"] == pytest.approx(rouge, abs=1e-9, rel=0)
    np.testing.assert_allclose(ours.per_item["rouge_l"], rouge_items, rtol=0, atol=1e-9)
    assert ours.corpus["cider_d"] == pytest.approx(cider, abs=1e-9, rel=0)
    np.testing.assert_allclose(ours.per_item["cider_d"], cider_items, rtol=0, atol=1e-9)
    # the case is not degenerate: middling scores, several items per metric in (0, 1)
    assert 0.1 < ours.corpus["bleu_1"] < 0.9 and 0.1 < ours.corpus["cider_d"] < 10
