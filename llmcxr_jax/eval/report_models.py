"""Report metrics that need model weights, read from local files (nothing is downloaded).

Each metric is optional: `load_report_models` loads what it is given and records, for each
metric it was not given (or whose optional package is not installed), why it is skipped; a
given file that cannot be used raises `InputError` naming it. torch and transformers are
imported inside the functions, so an evaluation without these weights never imports torch.

- CheXbert labels and F1-CheXbert, as the `f1chexbert` package (0.0.2) computes them.
  The labeler is CheXbert's (stanfordmlgroup/CheXbert, `bert_labeler`): a BERT encoder
  (bert-base-uncased), dropout and 14 linear heads on the [CLS] hidden state, 13 with 4
  classes (0 blank, 1 positive, 2 negative, 3 uncertain) and "No Finding" with 2 (0 blank,
  1 positive); the weights are `chexbert.pth`, a dict whose 'model_state_dict' keys start
  with 'module.' (DataParallel).
  A report is stripped, its whitespace runs collapsed to one space, WordPiece-tokenised and
  framed by [CLS] ... [SEP] (cut to 512 ids, the last one [SEP]; an empty report is
  [CLS] [SEP]); each head's argmax is the class. For F1, f1chexbert's "rrg" mode maps
  positive AND uncertain to 1 and blank/negative to 0 (`uncertain_positive=True`, our
  default, so the figures are comparable with those computed with that package);
  `uncertain_positive=False` counts uncertain as negative instead. F1 as sklearn's
  `classification_report` on the 0/1 matrices, generated against reference labels: micro
  (pooled TP/FP/FN) and macro (mean of the per-class F1, a class with no true and no
  predicted positive scoring 0) over the 14 observations and over the 5 common ones
  (Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion).
- RadGraph F1 (simple / partial / complete) as `radgraph` 0.1.18's `F1RadGraph` defines it
  (`radgraph/rewards.py`), per report pair: simple = F1 of the sets of (tokens, label) of
  the entities; partial = the same, with entities that have relations keyed
  (tokens, label, True); complete = entities without relations keyed (tokens, label) and
  each relation of an entity keyed (tokens.lower(), label, relation type, target
  tokens.lower()). P = |hyp & ref| / |hyp|, R = |hyp & ref| / |ref|, F1 = 2PR/(P+R) (0 when
  P + R = 0); a pair with an empty report or with no entity on one side scores 0. The
  corpus figure is the mean over pairs. The arithmetic is ours (`radgraph_rewards`); the
  annotations come from the `radgraph` package's model, loaded from a local directory.
- BERTScore P/R/F1 as `bert-score` 0.3.13 computes it with idf off: each text encoded with
  special tokens (truncated at the tokenizer's model_max_length), the hidden states of layer
  `num_layers` (0 = embeddings) L2-normalised, cosine matrix between all tokens ([CLS] and
  [SEP] included as match targets), P = mean over the candidate's tokens of the best cosine
  in the reference, R the other way round, [CLS]/[SEP] weighted 0 in those means;
  F = 2PR/(P+R); an empty candidate or reference gives P = R = F = 0. Rescaled
  (x - b) / (1 - b) only with a baseline file (bert-score's tsv: a row per layer, columns
  P,R,F). One difference: bert-score pads a batch and scores padded positions as cosine 0,
  so where every cosine of a token is negative it may floor that token's best match at 0;
  here each pair is matched over its real tokens only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmcxr_jax.data.labels import OBSERVATIONS
from llmcxr_jax.errors import InputError, MissingInputError
from llmcxr_jax.eval import metrics

# CheXbert's observation order (its heads, f1chexbert's target_names): the label schema's 14
# observations with "No Finding" moved from first to last
CHEXBERT_CLASSES = (*OBSERVATIONS[1:], OBSERVATIONS[0])
CHEXBERT_CLASSES = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
    "No Finding",
)
CHEXBERT_5 = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
CHEXBERT_5_INDEX = tuple(CHEXBERT_CLASSES.index(c) for c in CHEXBERT_5)
BLANK, POSITIVE, NEGATIVE, UNCERTAIN = 0, 1, 2, 3
MAX_IDS = 512  # CheXbert's input limit (BERT's positions)
RADGRAPH_LEVELS = ("simple", "partial", "complete")
# bert-score 0.3.13's default layer for some models (its `model2layers`), by directory name
BERTSCORE_LAYERS = {
    "bert-base-uncased": 9,
    "bert-large-uncased": 18,
    "bert-base-multilingual-cased": 9,
    "roberta-base": 10,
    "roberta-large": 17,
    "distilroberta-base": 5,
    "allenai/scibert_scivocab_uncased": 8,
    "scibert_scivocab_uncased": 8,
    "microsoft/deberta-xlarge-mnli": 40,
    "deberta-xlarge-mnli": 40,
}
TORCH_HINT = "torch is not installed (pip install 'llmcxr_jax[port]')"


@dataclass
class Scored:
    """A metric's per-item values (lists aligned with the inputs) and its corpus figures."""

    per_item: dict[str, list[Any]]
    corpus: dict[str, Any] = field(default_factory=dict)


def _one_line(e: BaseException) -> str:
    """An exception as `Type: first line` (library messages can run to many lines)."""
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"


def _need_torch() -> Any:
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as e:  # pragma: no cover - torch is installed where tests run
        raise ImportError(TORCH_HINT) from e
    return torch


# --- CheXbert ------------------------------------------------------------------------------


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().replace("\n", " ")).strip()


def _chexbert_config(state: dict[str, Any], tokenizer_dir: Path) -> Any:
    """BertConfig: the tokenizer directory's config.json if any (a bert-base-uncased download
    has one), else read off the weights' shapes (attention heads: hidden / 64)."""
    from transformers import BertConfig

    if (tokenizer_dir / "config.json").is_file():
        return BertConfig.from_pretrained(str(tokenizer_dir))
    emb = "bert.embeddings."
    vocab, hidden = state[emb + "word_embeddings.weight"].shape
    layers = {int(k.split(".")[3]) for k in state if k.startswith("bert.encoder.layer.")}
    inter = state["bert.encoder.layer.0.intermediate.dense.weight"].shape[0]
    return BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=len(layers),
        num_attention_heads=max(hidden // 64, 1),
        intermediate_size=inter,
        max_position_embeddings=state[emb + "position_embeddings.weight"].shape[0],
        type_vocab_size=state[emb + "token_type_embeddings.weight"].shape[0],
    )


def _labeler_module(config: Any) -> Any:
    """CheXbert's `bert_labeler` architecture (BERT, dropout, 13 four-way heads + one two-way
    head on the [CLS] state) with its parameter names."""
    import torch
    from transformers import BertModel

    class Labeler(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = BertModel(config)
            self.dropout = torch.nn.Dropout(0.1)
            h = config.hidden_size
            heads = [torch.nn.Linear(h, 4) for _ in range(13)] + [torch.nn.Linear(h, 2)]
            self.linear_heads = torch.nn.ModuleList(heads)

        def forward(self, ids: Any, mask: Any) -> list[Any]:
            cls = self.dropout(self.bert(ids, attention_mask=mask)[0][:, 0, :])
            return [head(cls) for head in self.linear_heads]

    return Labeler()


@dataclass
class CheXbert:
    """A loaded CheXbert labeler (`load_chexbert`)."""

    model: Any
    tokenizer: Any
    path: str

    def encode(self, text: str) -> list[int]:
        """f1chexbert's input ids for one report."""
        tok = self.tokenizer
        pieces = tok.tokenize(_clean(text))
        if not pieces:
            return [tok.cls_token_id, tok.sep_token_id]
        ids = [tok.cls_token_id, *tok.convert_tokens_to_ids(pieces), tok.sep_token_id]
        # 512 as f1chexbert (fewer where the encoder has fewer positions)
        limit = min(MAX_IDS, int(self.model.bert.config.max_position_embeddings))
        return ids[: limit - 1] + [tok.sep_token_id] if len(ids) > limit else ids

    def labels(self, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
        """[N, 14] CheXbert classes (0 blank, 1 positive, 2 negative, 3 uncertain; No Finding
        0/1) in `CHEXBERT_CLASSES` order."""
        import torch

        out = np.zeros((len(texts), len(CHEXBERT_CLASSES)), np.int64)
        for s in range(0, len(texts), batch_size):
            enc = [self.encode(t) for t in texts[s : s + batch_size]]
            width = max(len(e) for e in enc)
            ids = torch.zeros((len(enc), width), dtype=torch.long)
            mask = torch.zeros((len(enc), width), dtype=torch.float)
            for i, e in enumerate(enc):
                ids[i, : len(e)] = torch.tensor(e)
                mask[i, : len(e)] = 1
            with torch.no_grad():
                logits = self.model(ids, mask)
            out[s : s + len(enc)] = np.stack([lg.argmax(-1).numpy() for lg in logits], 1)
        return out


def load_chexbert(path: str | os.PathLike, tokenizer_dir: str | os.PathLike) -> CheXbert:
    """CheXbert from a local `chexbert.pth` and a local BERT tokenizer directory (vocab.txt,
    optionally tokenizer_config.json / config.json); InputError naming the file if unusable."""
    torch = _need_torch()
    from transformers import BertTokenizer

    p, tdir = Path(path), Path(tokenizer_dir)
    if not p.is_file():
        raise MissingInputError(f"{p}: no such CheXbert weights file")
    if not (tdir / "vocab.txt").is_file():
        raise MissingInputError(f"{tdir}: not a BERT tokenizer directory (no vocab.txt)")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise InputError(f"{p}: not a readable torch checkpoint ({_one_line(e)})") from e
    state = ckpt.get("model_state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise InputError(f"{p}: not a CheXbert checkpoint (no 'model_state_dict' dict)")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state.pop("bert.embeddings.position_ids", None)  # a buffer older transformers saved
    try:
        model = _labeler_module(_chexbert_config(state, tdir))
    except (KeyError, ValueError, AttributeError, IndexError) as e:
        raise InputError(f"{p}: not CheXbert weights (missing or odd key: {e})") from e
    own = model.state_dict()
    missing = sorted(set(own) - set(state) - {k for k in own if k.startswith("bert.pooler.")})
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise InputError(
            f"{p}: not CheXbert weights ({len(missing)} missing keys, e.g. {missing[:2]}; "
            f"{len(extra)} unexpected, e.g. {extra[:2]})"
        )
    bad = [k for k in state if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise InputError(
            f"{p}: {k} has shape {tuple(state[k].shape)}, the architecture (with "
            f"{tdir}) expects {tuple(own[k].shape)}"
        )
    model.load_state_dict(state, strict=False)
    model.eval()
    try:
        tokenizer = BertTokenizer.from_pretrained(str(tdir))
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{tdir}: cannot load the BERT tokenizer ({_one_line(e)})") from e
    if len(tokenizer) > model.bert.config.vocab_size:
        raise InputError(
            f"{tdir}: the tokenizer has {len(tokenizer)} tokens, {p} only "
            f"{model.bert.config.vocab_size}"
        )
    return CheXbert(model, tokenizer, str(p))


def chexbert_binary(labels: np.ndarray, uncertain_positive: bool = True) -> np.ndarray:
    """CheXbert classes -> 0/1: positive (and, by default, uncertain, as f1chexbert) = 1."""
    lab = np.asarray(labels)
    pos = lab == POSITIVE
    if uncertain_positive:
        pos |= lab == UNCERTAIN
    return pos.astype(np.int8)


def f1_chexbert(gen: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """Micro/macro F1 of 0/1 [N, 14] generated labels against reference labels, over the 14
    observations and the 5 common ones (`CHEXBERT_5`), with per-class F1 and support."""
    all14 = metrics.multilabel_f1(ref, gen, CHEXBERT_CLASSES)
    idx = list(CHEXBERT_5_INDEX)
    five = metrics.multilabel_f1(np.asarray(ref)[:, idx], np.asarray(gen)[:, idx], CHEXBERT_5)
    return {
        "micro_f1_14": all14["micro"],
        "macro_f1_14": all14["macro"],
        "micro_f1_5": five["micro"],
        "macro_f1_5": five["macro"],
        "per_class_f1": all14["per_class"],
        "support": all14["support"],
    }


F1_KEYS = ("micro_f1_14", "macro_f1_14", "micro_f1_5", "macro_f1_5")


def chexbert_scores(
    labeler: CheXbert,
    generated: Sequence[str],
    references: Sequence[str],
    uncertain_positive: bool = True,
) -> Scored:
    """CheXbert labels of both sides (per item: 14 classes each, and whether the 5 common
    0/1 labels agree) and F1-CheXbert (corpus)."""
    if len(generated) != len(references):
        raise ValueError(f"{len(generated)} generated reports, {len(references)} references")
    g, r = labeler.labels(list(generated)), labeler.labels(list(references))
    gb, rb = chexbert_binary(g, uncertain_positive), chexbert_binary(r, uncertain_positive)
    idx = list(CHEXBERT_5_INDEX)
    corpus = f1_chexbert(gb, rb)
    corpus["uncertain_positive"] = uncertain_positive
    return Scored(
        {
            "generated_labels": g.tolist(),
            "reference_labels": r.tolist(),
            "binary_generated": gb.tolist(),
            "binary_reference": rb.tolist(),
            "exact_match_5": (gb[:, idx] == rb[:, idx]).all(1).astype(float).tolist(),
        },
        corpus,
    )


# --- RadGraph ------------------------------------------------------------------------------


def _f1(hyp: set, ref: set) -> float:
    common = len(hyp & ref)
    p = common / len(hyp) if hyp else 0.0
    r = common / len(ref) if ref else 0.0
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def radgraph_rewards(hyp: dict[str, Any], ref: dict[str, Any]) -> tuple[float, float, float]:
    """(simple, partial, complete) RadGraph F1 of one pair of annotations ({"entities":
    {id: {"tokens", "label", "relations": [[type, target id], ...]}}}), as radgraph 0.1.18's
    `compute_reward`."""
    if not hyp.get("entities") or not ref.get("entities"):
        return 0.0, 0.0, 0.0

    def keys(ann: dict[str, Any]) -> tuple[set, set, set]:
        ents = ann["entities"]
        simple, partial, complete = set(), set(), set()
        for e in ents.values():
            tok, lab, rels = e["tokens"], e["label"], e["relations"]
            simple.add((tok, lab))
            partial.add((tok, lab, True) if rels else (tok, lab))
            if not rels:
                complete.add((tok, lab))
            for rtype, target in rels:
                complete.add((tok.lower(), lab, rtype, ents[target]["tokens"].lower()))
        return simple, partial, complete

    return tuple(_f1(h, r) for h, r in zip(keys(hyp), keys(ref), strict=True))  # type: ignore[return-value]


def radgraph_scores(
    annotate: Callable[[list[str]], list[dict[str, Any]]],
    generated: Sequence[str],
    references: Sequence[str],
) -> Scored:
    """RadGraph F1 per pair (simple/partial/complete) and their means. `annotate` maps
    reports to annotations (`load_radgraph`); pairs with an empty side score 0 unannotated,
    as in F1RadGraph."""
    if len(generated) != len(references):
        raise ValueError(f"{len(generated)} generated reports, {len(references)} references")
    keep = [i for i in range(len(generated)) if generated[i] and references[i]]
    anns = annotate([generated[i] for i in keep] + [references[i] for i in keep]) if keep else []
    per = {lvl: [0.0] * len(generated) for lvl in RADGRAPH_LEVELS}
    for j, i in enumerate(keep):
        for lvl, v in zip(
            RADGRAPH_LEVELS, radgraph_rewards(anns[j], anns[j + len(keep)]), strict=True
        ):
            per[lvl][i] = v
    corpus = {lvl: float(np.mean(v)) if v else 0.0 for lvl, v in per.items()}
    return Scored(per, corpus)


def load_radgraph(model_dir: str | os.PathLike) -> Callable[[list[str]], list[dict[str, Any]]]:
    """The `radgraph` package's annotator over a local model directory: an extracted
    radgraph archive (config.json, vocabulary/, weights.th) whose name is the model type
    (radgraph, radgraph-xl, modern-radgraph-xl, echograph). The package downloads nothing
    when that directory is not empty; its BERT (config.json's model_name) must be a local
    directory or already in the Hugging Face cache (the hub is set offline while loading).
    ImportError when the package is missing; InputError when the directory is unusable."""
    d = Path(model_dir)
    if not d.is_dir():
        raise MissingInputError(f"{d}: no such RadGraph model directory")
    missing = [n for n in ("config.json", "weights.th", "vocabulary") if not (d / n).exists()]
    if missing:
        raise InputError(f"{d}: not an extracted RadGraph model ({', '.join(missing)} missing)")
    kinds = ("radgraph", "radgraph-xl", "modern-radgraph-xl", "echograph")
    if d.name.lower() not in kinds:
        raise InputError(f"{d}: the directory must be named after its model type, one of {kinds}")
    _need_torch()
    try:
        from radgraph import RadGraph
    except ImportError as e:
        raise ImportError(f"the radgraph package is not installed ({e})") from e
    import huggingface_hub.constants as hub

    # the hub offline while the package loads: its BERT comes from a path or the local cache
    # (the constant is what huggingface_hub reads once imported; the variables for the rest)
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({k: "1" for k in saved})
    was_offline, hub.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE, True
    try:
        rg = RadGraph(model_type=d.name.lower(), model_cache_dir=str(d.parent), cuda=-1)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{d}: the radgraph package cannot load it ({_one_line(e)})") from e
    finally:
        hub.HF_HUB_OFFLINE = was_offline
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def annotate(texts: list[str]) -> list[dict[str, Any]]:
        out = rg(texts)
        return [out[str(i)] for i in range(len(texts))]

    return annotate


# --- BERTScore -----------------------------------------------------------------------------


@dataclass
class BertScorer:
    """A local encoder for BERTScore (`load_bertscore`)."""

    model: Any
    tokenizer: Any
    num_layers: int
    path: str
    baseline: np.ndarray | None = None  # (P, R, F) of the layer, from a baseline file

    def encode(self, text: str) -> list[int]:
        """bert-score's `sent_encode`: special tokens added, truncated at model_max_length."""
        tok = self.tokenizer
        text = text.strip()  # an empty text: the special tokens alone
        limit = int(tok.model_max_length)
        if limit > 10**6:  # no limit saved with the tokenizer: the encoder's positions
            limit = int(getattr(self.model.config, "max_position_embeddings", 512))
        return tok.encode(text, add_special_tokens=True, max_length=limit, truncation=True)

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> list[tuple[Any, Any]]:
        """(normalised layer states [T, D], token weights [T]) per text."""
        import torch

        tok, res = self.tokenizer, []
        special = {tok.cls_token_id, tok.sep_token_id}
        pad = tok.pad_token_id or 0
        for s in range(0, len(texts), batch_size):
            enc = [self.encode(t) for t in texts[s : s + batch_size]]
            width = max(len(e) for e in enc)
            ids = torch.full((len(enc), width), pad, dtype=torch.long)
            mask = torch.zeros((len(enc), width), dtype=torch.long)
            for i, e in enumerate(enc):
                ids[i, : len(e)] = torch.tensor(e)
                mask[i, : len(e)] = 1
            with torch.no_grad():
                out = self.model(ids, attention_mask=mask, output_hidden_states=True)
            h = out.hidden_states[self.num_layers].double()
            for i, e in enumerate(enc):
                v = h[i, : len(e)]
                w = torch.tensor([0.0 if t in special else 1.0 for t in e], dtype=torch.float64)
                res.append((v / v.norm(dim=-1, keepdim=True), w))
        return res


def greedy_match(
    cand: np.ndarray, ref: np.ndarray, cand_w: np.ndarray, ref_w: np.ndarray
) -> tuple[float, float, float]:
    """BERTScore's greedy cosine matching of two normalised token matrices [Tc, D], [Tr, D]
    with token weights: P = weighted mean over candidate tokens of their best cosine in the
    reference, R the reverse, F = 2PR/(P+R); (0, 0, 0) when either side has no weight."""
    cand, ref = np.asarray(cand, np.float64), np.asarray(ref, np.float64)
    cw, rw = np.asarray(cand_w, np.float64), np.asarray(ref_w, np.float64)
    if cw.sum() == 0 or rw.sum() == 0:
        return 0.0, 0.0, 0.0
    sim = cand @ ref.T
    p = float((sim.max(1) * cw).sum() / cw.sum())
    r = float((sim.max(0) * rw).sum() / rw.sum())
    f = 2 * p * r / (p + r) if p + r != 0 else 0.0
    return p, r, f


def bertscore(
    scorer: BertScorer,
    generated: Sequence[str],
    references: Sequence[str],
    batch_size: int = 32,
) -> Scored:
    """BERTScore P/R/F1 per pair (idf off) and their means; rescaled where the scorer has a
    baseline."""
    if len(generated) != len(references):
        raise ValueError(f"{len(generated)} generated reports, {len(references)} references")
    cands = scorer.embed(list(generated), batch_size)
    refs = scorer.embed(list(references), batch_size)
    prf = np.array(
        [
            greedy_match(c.numpy(), r.numpy(), cw.numpy(), rw.numpy())
            for (c, cw), (r, rw) in zip(cands, refs, strict=True)
        ]
    ).reshape(-1, 3)
    if scorer.baseline is not None:
        prf = (prf - scorer.baseline) / (1 - scorer.baseline)
    per = {k: prf[:, j].tolist() for j, k in enumerate(("precision", "recall", "f1"))}
    corpus: dict[str, Any] = {k: float(np.mean(v)) if v else 0.0 for k, v in per.items()}
    corpus.update(layer=scorer.num_layers, rescaled=scorer.baseline is not None)
    return Scored(per, corpus)


def load_bertscore(
    model_dir: str | os.PathLike, num_layers: int | None = None, baseline: str | None = None
) -> BertScorer:
    """A transformers encoder and its tokenizer from a local directory. `num_layers`: the
    hidden state used (default: bert-score's layer for the directory's model name, else the
    last); `baseline`: a bert-score baseline tsv to rescale with."""
    _need_torch()
    from transformers import AutoModel, AutoTokenizer

    d = Path(model_dir)
    if not d.is_dir():
        raise MissingInputError(f"{d}: no such BERTScore model directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(d))
        model = AutoModel.from_pretrained(str(d))
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{d}: cannot load a model and tokenizer ({_one_line(e)})") from e
    model.eval()
    if getattr(model, "encoder", None) is not None and getattr(model, "decoder", None) is not None:
        model = model.encoder
    depth = int(model.config.num_hidden_layers)
    if num_layers is None:
        name = str(getattr(model.config, "_name_or_path", "") or "")
        num_layers = BERTSCORE_LAYERS.get(d.name, BERTSCORE_LAYERS.get(name, depth))
    if not 0 <= num_layers <= depth:
        raise InputError(f"{d}: layer {num_layers} asked for, the model has 0..{depth}")
    base = None
    if baseline is not None:
        b = Path(baseline)
        try:
            rows = [ln.split(",") for ln in b.read_text().split("\n")[1:] if ln.strip()]
            base = np.array([float(x) for x in rows[num_layers][-3:]])
        except (OSError, ValueError, IndexError) as e:
            raise InputError(
                f"{b}: not a bert-score baseline file with layer {num_layers} ({_one_line(e)})"
            ) from e
    return BertScorer(model, tokenizer, num_layers, str(d), base)


# --- all of them ---------------------------------------------------------------------------


@dataclass
class ReportModels:
    """The loaded scorers, and for each metric not loaded, why (`skipped`)."""

    chexbert: CheXbert | None = None
    radgraph: Callable[[list[str]], list[dict[str, Any]]] | None = None
    bertscore: BertScorer | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    uncertain_positive: bool = True  # CheXbert's uncertain counted as positive (f1chexbert)

    @property
    def any(self) -> bool:
        return any(x is not None for x in (self.chexbert, self.radgraph, self.bertscore))


def load_report_models(
    chexbert: str | None = None,
    bert_tokenizer: str | None = None,
    radgraph: str | None = None,
    bertscore_model: str | None = None,
    bertscore_layer: int | None = None,
    bertscore_baseline: str | None = None,
    chexbert_uncertain_positive: bool = True,
) -> ReportModels:
    """Load the scorers given (paths), recording a reason for each one skipped. A missing
    optional package skips its metric; a given file that cannot be used raises InputError."""
    got = ReportModels(uncertain_positive=chexbert_uncertain_positive)
    if chexbert is None:
        got.skipped["chexbert"] = "no CheXbert weights given (--chexbert)"
    elif bert_tokenizer is None:
        raise InputError("--chexbert needs --bert-tokenizer (a local bert-base-uncased tokenizer)")
    else:
        try:
            got.chexbert = load_chexbert(chexbert, bert_tokenizer)
        except ImportError as e:
            got.skipped["chexbert"] = str(e)
    if radgraph is None:
        got.skipped["radgraph"] = "no RadGraph model directory given (--radgraph)"
    else:
        try:
            got.radgraph = load_radgraph(radgraph)
        except ImportError as e:
            got.skipped["radgraph"] = str(e)
    if bertscore_model is None:
        got.skipped["bertscore"] = "no BERTScore model directory given (--bertscore-model)"
    else:
        try:
            got.bertscore = load_bertscore(bertscore_model, bertscore_layer, bertscore_baseline)
        except ImportError as e:
            got.skipped["bertscore"] = str(e)
    return got


def _ci(stat: Callable[..., float], arrays: Any, num: int, seed: int, level: float) -> Any:
    n = len(arrays[0])
    if not num or n == 0:
        return None
    return list(metrics.bootstrap_ci(stat, arrays, num=num, seed=seed, level=level))


def score_reports(
    models: ReportModels,
    generated: Sequence[str],
    references: Sequence[str],
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    uncertain_positive: bool | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """All loaded metrics over the pairs: (results with `<figure>_ci95` percentile-bootstrap
    intervals over items, as `evaluate` forms them, and `{"skipped": why}` for the others;
    per-item scores, one dict per pair). `uncertain_positive`: default `models`'s."""
    if uncertain_positive is None:
        uncertain_positive = models.uncertain_positive
    res: dict[str, Any] = {name: {"skipped": why} for name, why in models.skipped.items()}
    per: list[dict[str, Any]] = [{} for _ in generated]
    if models.chexbert is not None:
        s = chexbert_scores(models.chexbert, generated, references, uncertain_positive)
        c = dict(s.corpus)
        gb = np.asarray(s.per_item["binary_generated"], np.int8)
        rb = np.asarray(s.per_item["binary_reference"], np.int8)
        for key in F1_KEYS:
            c[key + "_ci95"] = _ci(
                lambda g, r, key=key: f1_chexbert(g, r)[key], [gb, rb], bootstrap, seed, level
            )
        c["count"] = len(generated)
        res["chexbert"] = c
        for i, p in enumerate(per):
            p["chexbert_generated"] = s.per_item["generated_labels"][i]
            p["chexbert_reference"] = s.per_item["reference_labels"][i]
    for name, fn in (("radgraph", radgraph_scores), ("bertscore", bertscore)):
        model = getattr(models, name)
        if model is None:
            continue
        s = fn(model, generated, references)
        c = dict(s.corpus)
        for key, vals in s.per_item.items():
            c[key + "_ci95"] = _ci(np.mean, [np.asarray(vals)], bootstrap, seed, level)
            for i, p in enumerate(per):
                p[f"{name}_{key}"] = vals[i]
        c["count"] = len(generated)
        res[name] = c
    return res, per


def markdown_lines(res: dict[str, Any] | None) -> list[str]:
    """The "Report metrics from local weights" section of results.md."""
    if not res:
        return []
    what = f" ({res['source']} reports against the references)" if res.get("source") else ""
    lines = [f"Report metrics from local weights{what}:", "", "| Metric | Value |", "|---|---:|"]

    def row(label: str, r: dict[str, Any], key: str) -> None:
        lines.append(f"| {label} | {metrics.fmt_ci(r.get(key), r.get(key + '_ci95'))} |")

    for name, title in (
        ("chexbert", "F1-CheXbert"),
        ("radgraph", "RadGraph F1"),
        ("bertscore", "BERTScore"),
    ):
        r = res.get(name)
        if r is None:
            continue
        if "skipped" in r:
            lines.append(f"| {title} | skipped: {r['skipped']} |")
        elif name == "chexbert":
            for key in F1_KEYS:
                avg, n = key.split("_f1_")
                row(f"{title} {avg} ({n} observations)", r, key)
        elif name == "radgraph":
            for key in RADGRAPH_LEVELS:
                row(f"{title} {key}", r, key)
        else:
            for key, label in (("precision", "precision"), ("recall", "recall"), ("f1", "F1")):
                row(f"{title} {label} (layer {r.get('layer')})", r, key)
    if "chexbert" in res and "skipped" not in res["chexbert"]:
        how = "positive" if res["chexbert"].get("uncertain_positive") else "negative"
        lines += ["", f"CheXbert: uncertain labels counted as {how}."]
    return [*lines, ""]


def summary_line(res: dict[str, Any] | None) -> list[str]:
    """The model-based report metrics as one plain-text line (none when nothing ran)."""
    if not res:
        return []
    parts = []
    c, g, b = (res.get(k) or {} for k in ("chexbert", "radgraph", "bertscore"))
    if "micro_f1_14" in c:
        parts.append(
            f"F1-CheXbert micro-14 {metrics.fmt_ci(c['micro_f1_14'], c.get('micro_f1_14_ci95'))}"
            f", micro-5 {metrics.fmt_ci(c['micro_f1_5'], c.get('micro_f1_5_ci95'))}"
        )
    if "partial" in g:
        parts.append(f"RadGraph F1 partial {metrics.fmt_ci(g['partial'], g.get('partial_ci95'))}")
    if "f1" in b:
        parts.append(f"BERTScore F1 {metrics.fmt_ci(b['f1'], b.get('f1_ci95'))}")
    skipped = [k for k in ("chexbert", "radgraph", "bertscore") if "skipped" in (res.get(k) or {})]
    if skipped:
        parts.append("skipped: " + ", ".join(skipped))
    return ["report metrics from local weights: " + "; ".join(parts)]
