"""Report text metrics that need no weights: BLEU-1..4, ROUGE-L and CIDEr-D.

The report-generation literature (MIMIC-CXR, IU X-ray, LLM-CXR's successors) quotes these
figures as the COCO caption evaluation code computes them, `pycocoevalcap` (1.2 on PyPI, from
github.com/salaniz/pycocoevalcap, itself tylin/coco-caption). They are reimplemented here
from that code's algorithms (not copied) so that our numbers are comparable with published
ones, and `tests/test_text_metrics.py` checks agreement with pycocoevalcap's `Bleu(4)`,
`Rouge()` and `Cider()` scorers fed the same tokens:

- BLEU (Papineni et al., 2002), corpus level: clipped n-gram matches and candidate n-gram
  counts summed over all items, the cumulative geometric mean of the 1..n precisions, and a
  brevity penalty exp(1 - r/c) when the total candidate length c is below the summed
  reference length r, where each item's reference length is the one closest to its
  candidate's length (ties: the shorter; pycocoevalcap's `option="closest"`). As there,
  1e-15 is added to each match count and 1e-9 to each candidate count (so an empty
  candidate gives a tiny score, not a division by zero), and 1e-15 / 1e-9 to c / r.
  Sentence BLEU per item is the same formula on that item's counts alone.
- ROUGE-L (Lin, 2004): per item, the longest common subsequence of tokens against each
  reference; precision and recall are the maxima over references, F = (1 + b^2) P R /
  (R + b^2 P) with b = 1.2; the corpus figure is the mean over items.
- CIDEr-D (Vedantam et al., 2015) as coco-caption's `Cider` computes it: TF-IDF vectors of
  1..4-grams with document frequencies taken from the references of the evaluated corpus
  (one document per item), IDF = log(N) - log(max(1, df)); per n, the similarity to each
  reference is sum over the candidate's n-grams of min(w_cand, w_ref) * w_ref (the clipping)
  over the product of the unclipped norms, times a Gaussian length penalty
  exp(-delta^2 / (2 * 6^2)); averaged over n = 1..4 and over references, times 10; the corpus
  figure is the mean over items. As in coco-caption, delta is the difference of the two
  texts' bigram counts (len - 1 for a non-empty text), not of their token counts.

Tokenisation: pycocoevalcap runs Stanford CoreNLP 3.4.1's PTBTokenizer (Java) with
`-lowerCase` and drops punctuation tokens. `tokenize` is a pure-Python equivalent for report
prose (no Java): lower-case; numbers such as "3.5", "1,200" and "12:30" and words with inner
hyphens, periods or slashes ("x-ray", "e.g.", "and/or") stay whole; clitics split off as PTB
does ("patient's" -> "patient 's", "isn't" -> "is n't"); every other symbol is its own token;
then the tokens pycocoevalcap removes (. , ? ! : ; - -- ... quotes and brackets) are dropped.
It may differ from CoreNLP on rare cases: abbreviations ending a word with a period
("dr." becomes "dr"), slashes between words (kept whole here), symbols glued to letters,
non-ASCII quotes and dashes, and CoreNLP 3.4.1's escaping of "/" and "*"; on such texts the scores
can differ slightly from a Java run. Scores from pre-tokenised text (the `*_tokens`
functions) match pycocoevalcap to rounding.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

BLEU_N = 4
ROUGE_BETA = 1.2
CIDER_N = 4
CIDER_SIGMA = 6.0
CIDER_SCALE = 10.0
# pycocoevalcap's smoothing constants: added to match counts (TINY) and candidate counts
# (SMALL) so that an n-gram order with no candidate n-grams does not divide by zero
TINY = 1e-15
SMALL = 1e-9

# pycocoevalcap's PUNCTUATIONS, plus the bracket and quote characters that CoreNLP first
# rewrites to -LRB-/``/'' (which are in that list)
DROPPED = frozenset(
    ["''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";", '"']
    + list("()[]{}")
    + ["\u2018", "\u2019", "\u201c", "\u201d"]
)
_CLITIC = r"(?:n't|'s|'re|'ve|'ll|'d|'m)"
_TOKEN = re.compile(
    r"\d+(?:[,:]\d+)+"  # 1,200, 12:30 (3.5 is a word below)
    r"|(?:[a-z]\.){2,}"  # e.g., i.e., a.m.
    rf"|[a-z0-9]+(?:[-/.][a-z0-9]+)*(?={_CLITIC}\b)"  # the word before a clitic
    rf"|{_CLITIC}\b"
    r"|[a-z0-9]+(?:[-/.'][a-z0-9]+)*"  # words with inner - / . '
    r"|\.\.\.|--|``|''"
    r"|\S",  # any other symbol on its own
)

Tokens = list[str]


def tokenize(text: str) -> Tokens:
    """PTB-style tokens of a report, lower-cased, punctuation dropped (see the module doc)."""
    text = text.lower().replace("\n", " ")
    # "isn't" -> "is" + "n't": the word pattern must stop before the n of n't
    text = re.sub(r"([a-z])n't\b", r"\1 n't", text)
    return [t for t in _TOKEN.findall(text) if t not in DROPPED]


def _ngrams(tokens: Tokens, n: int) -> Counter[tuple[str, ...]]:
    """Counts of the 1..n-grams of `tokens` (one Counter for all orders)."""
    counts: Counter[tuple[str, ...]] = Counter()
    for k in range(1, n + 1):
        for i in range(len(tokens) - k + 1):
            counts[tuple(tokens[i : i + k])] += 1
    return counts


def _bleu_from_counts(
    correct: Sequence[float], guess: Sequence[float], cand_len: float, ref_len: float
) -> list[float]:
    """Cumulative BLEU-1..n with pycocoevalcap's smoothing and brevity penalty."""
    scores, product = [], 1.0
    for k, (c, g) in enumerate(zip(correct, guess, strict=True)):
        product *= (float(c) + TINY) / (float(g) + SMALL)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (cand_len + TINY) / (ref_len + SMALL)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


def bleu_tokens(
    candidates: Sequence[Tokens], references: Sequence[Sequence[Tokens]], n: int = BLEU_N
) -> tuple[list[float], list[list[float]]]:
    """Corpus BLEU-1..n and per-item sentence BLEU ([item][order]) of tokenised texts."""
    total_correct, total_guess = [0] * n, [0] * n
    total_cand, total_ref = 0, 0
    per_item = []
    for cand, refs in zip(candidates, references, strict=True):
        clip: dict[tuple[str, ...], int] = {}
        for ref in refs:
            for g, c in _ngrams(ref, n).items():
                clip[g] = max(clip.get(g, 0), c)
        correct = [0] * n
        for g, c in _ngrams(cand, n).items():
            correct[len(g) - 1] += min(clip.get(g, 0), c)
        guess = [max(0, len(cand) - k) for k in range(n)]
        # the closest reference length; on a tie the shorter one
        ref_len = min((abs(len(r) - len(cand)), len(r)) for r in refs)[1]
        per_item.append(_bleu_from_counts(correct, guess, len(cand), ref_len))
        total_cand += len(cand)
        total_ref += ref_len
        for k in range(n):
            total_correct[k] += correct[k]
            total_guess[k] += guess[k]
    return _bleu_from_counts(total_correct, total_guess, total_cand, total_ref), per_item


def lcs_length(a: Tokens, b: Tokens) -> int:
    """Length of the longest common subsequence of two token lists (O(len a * len b))."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0
        for j, y in enumerate(b, start=1):
            keep = row[j]
            row[j] = prev_diag + 1 if x == y else max(row[j], row[j - 1])
            prev_diag = keep
    return row[-1]


def rouge_l_tokens(
    candidate: Tokens, references: Sequence[Tokens], beta: float = ROUGE_BETA
) -> float:
    """ROUGE-L F of one candidate against its references (max P and max R over references).

    An empty text counts as one empty token, as pycocoevalcap's `split(" ")` makes it: an
    empty candidate scores 1 against an empty reference and 0 against any other.
    """
    cand = candidate or [""]
    precisions, recalls = [], []
    for ref in references:
        ref = ref or [""]
        lcs = lcs_length(ref, cand)
        precisions.append(lcs / len(cand))
        recalls.append(lcs / len(ref))
    p, r = max(precisions), max(recalls)
    if p == 0 or r == 0:
        return 0.0
    return (1 + beta**2) * p * r / (r + beta**2 * p)


@dataclass
class _TfIdf:
    """A text's TF-IDF weights per n-gram order, their norms and its bigram count."""

    weights: list[dict[tuple[str, ...], float]]
    norms: list[float]
    length: int


def cider_d_tokens(
    candidates: Sequence[Tokens],
    references: Sequence[Sequence[Tokens]],
    n: int = CIDER_N,
    sigma: float = CIDER_SIGMA,
) -> tuple[float, list[float]]:
    """Corpus CIDEr-D (mean over items) and per-item CIDEr-D of tokenised texts."""
    cand_counts = [_ngrams(c, n) for c in candidates]
    ref_counts = [[_ngrams(r, n) for r in refs] for refs in references]
    if len(cand_counts) != len(ref_counts):
        raise ValueError(f"{len(cand_counts)} candidates but {len(ref_counts)} reference sets")
    if not cand_counts:
        return float("nan"), []
    doc_freq: Counter[tuple[str, ...]] = Counter()
    for refs in ref_counts:
        doc_freq.update(set().union(*refs))
    log_docs = math.log(float(len(ref_counts)))

    def tfidf(counts: Counter[tuple[str, ...]]) -> _TfIdf:
        weights: list[dict[tuple[str, ...], float]] = [{} for _ in range(n)]
        sq = [0.0] * n
        length = 0
        for g, tf in counts.items():
            k = len(g) - 1
            w = float(tf) * (log_docs - math.log(max(1.0, doc_freq.get(g, 0))))
            weights[k][g] = w
            sq[k] += w**2
            if k == 1:  # coco-caption's "length" counts bigrams (see the module doc)
                length += tf
        return _TfIdf(weights, [math.sqrt(s) for s in sq], length)

    def similarity(c: _TfIdf, r: _TfIdf) -> np.ndarray:
        penalty = math.exp(-(float(c.length - r.length) ** 2) / (2 * sigma**2))
        val = np.zeros(n)
        for k in range(n):
            ref_w = r.weights[k]
            for g, w in c.weights[k].items():
                rw = ref_w.get(g, 0.0)
                val[k] += min(w, rw) * rw
            if c.norms[k] != 0 and r.norms[k] != 0:
                val[k] /= c.norms[k] * r.norms[k]
            val[k] *= penalty
        return val

    scores = []
    for cand, refs in zip(cand_counts, ref_counts, strict=True):
        vc = tfidf(cand)
        total = np.zeros(n)
        for ref in refs:
            total += similarity(vc, tfidf(ref))
        scores.append(float(np.mean(total)) / len(refs) * CIDER_SCALE)
    return float(np.mean(scores)), scores


@dataclass
class TextScores:
    """Corpus figures (`corpus`) and per-item scores (`per_item`, one list per metric)."""

    corpus: dict[str, float] = field(default_factory=dict)
    per_item: dict[str, list[float]] = field(default_factory=dict)


def _reference_lists(references: Sequence[str] | Sequence[Sequence[str]]) -> list[list[str]]:
    """One list of reference texts per item (a plain string is one reference)."""
    out = []
    for r in references:
        refs = [r] if isinstance(r, str) else list(r)
        if not refs:
            raise ValueError("an item has no reference text")
        out.append(refs)
    return out


def text_scores(
    generated: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]
) -> TextScores:
    """BLEU-1..4, ROUGE-L and CIDEr-D of generated reports against their references.

    `references[i]` is item i's reference text or a list of them. Keys: bleu_1..bleu_4,
    rouge_l, cider_d; per item also (sentence BLEU) bleu_1..bleu_4.
    """
    if isinstance(generated, str):
        raise TypeError("generated must be a sequence of reports, not one string")
    refs = _reference_lists(references)
    if len(refs) != len(generated):
        raise ValueError(f"{len(generated)} generated reports but {len(refs)} references")
    if not refs:
        raise ValueError("no reports to score")
    cands = [tokenize(g) for g in generated]
    ref_tokens = [[tokenize(r) for r in rs] for rs in refs]
    bleu, bleu_items = bleu_tokens(cands, ref_tokens)
    rouge_items = [rouge_l_tokens(c, rs) for c, rs in zip(cands, ref_tokens, strict=True)]
    cider, cider_items = cider_d_tokens(cands, ref_tokens)
    scores = TextScores()
    for k in range(BLEU_N):
        scores.corpus[f"bleu_{k + 1}"] = bleu[k]
        scores.per_item[f"bleu_{k + 1}"] = [b[k] for b in bleu_items]
    scores.corpus["rouge_l"] = float(np.mean(rouge_items))
    scores.per_item["rouge_l"] = rouge_items
    scores.corpus["cider_d"] = cider
    scores.per_item["cider_d"] = cider_items
    return scores


def report_text_metrics(
    generated: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]
) -> dict[str, float]:
    """Corpus BLEU-1..4, ROUGE-L and CIDEr-D as pycocoevalcap computes them (module doc)."""
    return text_scores(generated, references).corpus
