"""Report metrics from local weights (eval/report_models.py) on tiny random models.

The models have the real architectures and state-dict key names (CheXbert's `bert_labeler`
saved as DataParallel does, a BERT for BERTScore) but 2 layers of width 32 and a WordPiece
vocabulary written here, so everything runs in seconds and nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from llmcxr_jax.errors import InputError  # noqa: E402
from llmcxr_jax.eval import report_models as rm  # noqa: E402

WORDS = (  # noqa: SIM905 - a word list reads better as one string
    "no acute cardiopulmonary process pleural effusion edema mild moderate cardiomegaly heart "
    "size is normal the there lungs are clear small left right atelectasis consolidation "
    "possible basal of and with . , ##s ##al"
).split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
REPORTS = [
    "No acute cardiopulmonary process.",
    "Small left pleural effusion with basal atelectasis.",
    "Moderate cardiomegaly and mild edema.",
    "",
    "The lungs are clear. Heart size is normal.",
]
GENERATED = [
    "No acute process.",
    "Small right pleural effusions.",
    "Mild cardiomegaly, possible consolidation.",
    "Lungs are clear.",
    "",
]


def _config():
    return transformers.BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bert_tokenizer")
    (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    _config().save_pretrained(d)  # a bert-base-uncased download carries its config.json
    return d


class RefLabeler(torch.nn.Module):
    """CheXbert's bert_labeler, written out here independently of the module under test."""

    def __init__(self, config):
        super().__init__()
        self.bert = transformers.BertModel(config)
        self.dropout = torch.nn.Dropout(0.1)
        heads = [torch.nn.Linear(32, 4) for _ in range(13)] + [torch.nn.Linear(32, 2)]
        self.linear_heads = torch.nn.ModuleList(heads)

    def forward(self, ids, mask):
        cls = self.dropout(self.bert(ids, attention_mask=mask)[0][:, 0, :])
        return [h(cls) for h in self.linear_heads]


@pytest.fixture(scope="module")
def chexbert_file(tmp_path_factory):
    torch.manual_seed(0)
    model = RefLabeler(_config()).eval()
    with torch.no_grad():  # spread the heads so every class occurs
        for h in model.linear_heads:
            h.weight.mul_(40.0)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("chexbert") / "chexbert.pth"
    torch.save({"model_state_dict": state, "epoch": 3}, path)
    return path, model


def _ref_label(model, tokenizer, text):
    """f1chexbert's get_label: one report, no padding, argmax per head."""
    text = " ".join(text.split())
    pieces = tokenizer.tokenize(text)
    ids = [2, *tokenizer.convert_tokens_to_ids(pieces), 3] if pieces else [2, 3]
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model(x, torch.ones_like(x, dtype=torch.float))
    return [int(o.argmax(1)) for o in out]


def test_chexbert_loads_the_dataparallel_checkpoint_and_labels_like_f1chexbert(
    chexbert_file, tok_dir
):
    path, ref = chexbert_file
    labeler = rm.load_chexbert(path, tok_dir)
    texts = REPORTS + GENERATED + ["no   acute\n\ncardiopulmonary  process ."]
    got = labeler.labels(texts, batch_size=4)  # batched and padded
    assert got.shape == (len(texts), 14) and got.dtype == np.int64
    assert set(np.unique(got[:, :13])) <= {0, 1, 2, 3} and set(np.unique(got[:, 13])) <= {0, 1}
    want = [_ref_label(ref, labeler.tokenizer, t) for t in texts]
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(got)) >= 3  # the random heads are not constant
    assert (got[0] == got[-1]).all()  # whitespace runs collapse
    assert labeler.encode("") == [2, 3]
    long = labeler.encode("edema " * 600)
    assert len(long) == 64 and long[0] == 2 and long[-1] == 3  # the tiny BERT's 64 positions
    assert labeler.labels(["edema " * 600]).shape == (1, 14)


def test_chexbert_config_read_off_the_weights_without_config_json(chexbert_file, tmp_path):
    path, _ = chexbert_file
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    # hidden 32 < 64: one head; the shapes load, so the labeler runs
    labeler = rm.load_chexbert(path, tmp_path)
    assert labeler.model.bert.config.num_hidden_layers == 2
    assert labeler.labels(["mild edema"]).shape == (1, 14)


def test_bad_chexbert_files_give_one_line_naming_the_file(chexbert_file, tok_dir, tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=r"junk\.pth: not a readable torch checkpoint"):
        rm.load_chexbert(junk, tok_dir)
    nodict = tmp_path / "nodict.pth"
    torch.save({"state": {}}, nodict)
    with pytest.raises(InputError, match=r"nodict\.pth: .*'model_state_dict'"):
        rm.load_chexbert(nodict, tok_dir)
    path, ref = chexbert_file
    state = {f"module.{k}": v for k, v in ref.state_dict().items()}
    del state["module.linear_heads.13.weight"]
    broken = tmp_path / "broken.pth"
    torch.save({"model_state_dict": state}, broken)
    with pytest.raises(InputError, match=r"broken\.pth: not CheXbert weights \(1 missing"):
        rm.load_chexbert(broken, tok_dir)
    with pytest.raises(InputError, match="no such CheXbert weights file"):
        rm.load_chexbert(tmp_path / "absent.pth", tok_dir)
    with pytest.raises(InputError, match="no vocab.txt"):
        rm.load_chexbert(path, tmp_path)
    for err in (junk, nodict, broken):
        with pytest.raises(InputError) as e:
            rm.load_chexbert(err, tok_dir)
        assert "\n" not in str(e.value)


def test_uncertain_is_positive_by_default_as_f1chexbert():
    lab = np.array([[0, 1, 2, 3] * 3 + [1, 1], [3] * 13 + [0]])
    assert rm.chexbert_binary(lab).tolist()[0] == [0, 1, 0, 1] * 3 + [1, 1]
    assert rm.chexbert_binary(lab, uncertain_positive=False).tolist()[0] == [0, 1, 0, 0] * 3 + [
        1,
        1,
    ]
    assert rm.chexbert_binary(lab)[1].tolist() == [1] * 13 + [0]


def test_f1_chexbert_by_hand():
    # 3 reports; columns in CHEXBERT_CLASSES order. Only four observations are ever positive:
    # Cardiomegaly (1), Edema (4), Pleural Effusion (9), No Finding (13).
    ref = np.zeros((3, 14), np.int8)
    gen = np.zeros((3, 14), np.int8)
    ref[0, 1] = ref[1, 1] = 1  # cardiomegaly in 0, 1
    gen[0, 1] = 1  #            generated: in 0 only         -> TP 1, FN 1: F1 2/3
    ref[1, 4] = 1  #            edema in 1
    gen[1, 4] = gen[2, 4] = 1  # generated: in 1 and 2        -> TP 1, FP 1: F1 2/3
    ref[2, 9] = 1  #            effusion in 2, never generated -> F1 0
    gen[0, 13] = 1  #           No Finding generated in 0 only -> FP 1: F1 0
    f = rm.f1_chexbert(gen, ref)
    # micro 14: TP 2, FP 2, FN 2 -> 4 / (4 + 4) = 0.5
    assert f["micro_f1_14"] == pytest.approx(0.5)
    # macro 14: (2/3 + 2/3 + 0 + 0) / 14, the 10 never-seen classes counting 0
    assert f["macro_f1_14"] == pytest.approx((4 / 3) / 14)
    # 5 common (Cardiomegaly, Edema, Effusion among them): TP 2, FP 1, FN 2 -> 4 / 7
    assert f["micro_f1_5"] == pytest.approx(4 / 7)
    assert f["macro_f1_5"] == pytest.approx((4 / 3) / 5)
    assert f["per_class_f1"]["Cardiomegaly"] == pytest.approx(2 / 3)
    assert f["support"]["Pleural Effusion"] == 1


def test_f1_chexbert_equals_sklearn_classification_report():
    from sklearn import metrics

    rng = np.random.default_rng(4)
    ref = (rng.random((40, 14)) < 0.3).astype(np.int8)
    gen = (rng.random((40, 14)) < 0.3).astype(np.int8)
    ref[:, 10] = gen[:, 10] = 0  # a class never true nor predicted
    f = rm.f1_chexbert(gen, ref)
    cr = metrics.classification_report(ref, gen, output_dict=True, zero_division=0)
    idx = list(rm.CHEXBERT_5_INDEX)
    cr5 = metrics.classification_report(ref[:, idx], gen[:, idx], output_dict=True, zero_division=0)
    assert f["micro_f1_14"] == pytest.approx(cr["micro avg"]["f1-score"])
    assert f["macro_f1_14"] == pytest.approx(cr["macro avg"]["f1-score"])
    assert f["micro_f1_5"] == pytest.approx(cr5["micro avg"]["f1-score"])
    assert f["macro_f1_5"] == pytest.approx(cr5["macro avg"]["f1-score"])


# --- RadGraph --------------------------------------------------------------------------------

HYP = {
    "entities": {
        "1": {"tokens": "effusion", "label": "OBS-DP", "relations": [["located_at", "2"]]},
        "2": {"tokens": "pleural", "label": "ANAT-DP", "relations": []},
        "3": {"tokens": "edema", "label": "OBS-DA", "relations": []},
    }
}
REF = {
    "entities": {
        "1": {"tokens": "Effusion", "label": "OBS-DP", "relations": [["located_at", "2"]]},
        "2": {"tokens": "pleural", "label": "ANAT-DP", "relations": []},
        "3": {"tokens": "edema", "label": "OBS-DP", "relations": []},
        "4": {"tokens": "heart", "label": "ANAT-DP", "relations": []},
    }
}


def test_radgraph_rewards_by_hand():
    simple, partial, complete = rm.radgraph_rewards(HYP, REF)
    # simple: hyp {effusion/OBS-DP, pleural/ANAT-DP, edema/OBS-DA}, ref {Effusion/OBS-DP,
    # pleural, edema/OBS-DP, heart}: common {pleural} -> P 1/3, R 1/4, F1 2/7
    assert simple == pytest.approx(2 / 7)
    # partial: effusion keyed with True on both sides but the case differs -> same as simple
    assert partial == pytest.approx(2 / 7)
    # complete: relation keys are lower-cased -> common {(effusion, OBS-DP, located_at,
    # pleural), pleural} of 3 and 4 -> P 2/3, R 1/2, F1 4/7
    assert complete == pytest.approx(4 / 7)
    assert rm.radgraph_rewards(HYP, HYP) == (1.0, 1.0, 1.0)
    assert rm.radgraph_rewards({"entities": {}}, REF) == (0.0, 0.0, 0.0)


def test_radgraph_rewards_equal_the_radgraph_package():
    spec = importlib.util.find_spec("radgraph")  # in the test extra: a missing one fails here
    assert spec is not None and spec.submodule_search_locations, "radgraph is not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "rewards.py"
    # rewards.py alone (the package's __init__ would build its allennlp stack)
    mod_spec = importlib.util.spec_from_file_location("radgraph_rewards_only", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    rng = np.random.default_rng(0)
    words = ["effusion", "Effusion", "edema", "pleural", "heart", "lung"]
    labels = ["OBS-DP", "OBS-DA", "ANAT-DP"]

    def random_ann():
        n = int(rng.integers(0, 5))
        ents = {}
        for i in range(n):
            rels = [
                [str(rng.choice(["located_at", "modify"])), str(int(rng.integers(0, n)))]
                for _ in range(int(rng.integers(0, 3)))
            ]
            ents[str(i)] = {
                "tokens": str(rng.choice(words)),
                "label": str(rng.choice(labels)),
                "relations": rels,
            }
        return {"entities": ents}

    for _ in range(200):
        h, r = random_ann(), random_ann()
        want = mod.compute_reward(h, r, "all")
        assert rm.radgraph_rewards(h, r) == pytest.approx(want)


def test_radgraph_scores_with_an_annotator_and_empty_reports():
    seen = []

    def annotate(texts):
        seen.append(list(texts))
        return [HYP if t.startswith("gen") else REF for t in texts]

    s = rm.radgraph_scores(annotate, ["gen a", "", "gen c"], ["ref a", "ref b", "ref c"])
    assert seen == [["gen a", "gen c", "ref a", "ref c"]]  # empty pairs are not annotated
    assert s.per_item["simple"] == pytest.approx([2 / 7, 0.0, 2 / 7])
    assert s.per_item["complete"] == pytest.approx([4 / 7, 0.0, 4 / 7])
    assert s.corpus["complete"] == pytest.approx(8 / 21)


def test_radgraph_bad_directory(tmp_path):
    with pytest.raises(InputError, match="no such RadGraph model directory"):
        rm.load_radgraph(tmp_path / "absent")
    d = tmp_path / "radgraph"
    d.mkdir()
    (d / "config.json").write_text("{}")
    with pytest.raises(InputError, match=r"radgraph: not an extracted RadGraph model"):
        rm.load_radgraph(d)
    (d / "weights.th").write_bytes(b"")
    (d / "vocabulary").mkdir()
    odd = tmp_path / "my-model"
    odd.mkdir()
    for n in ("config.json", "weights.th"):
        (odd / n).write_text("{}")
    (odd / "vocabulary").mkdir()
    with pytest.raises(InputError, match="named after its model type"):
        rm.load_radgraph(odd)
    if importlib.util.find_spec("radgraph") is None:
        return
    import huggingface_hub.constants as hub

    offline, env = hub.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")
    with pytest.raises(InputError, match=r"radgraph: the radgraph package cannot load it \("):
        rm.load_radgraph(d)  # the package's own failure on a bad config, as one line
    assert offline is hub.HF_HUB_OFFLINE and os.environ.get("HF_HUB_OFFLINE") == env  # restored


# --- BERTScore -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory, tok_dir):
    d = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(1)
    transformers.BertModel(_config()).eval().save_pretrained(d)
    # model_max_length as a real download has it (bert-score passes it to the tokenizer)
    tok = transformers.BertTokenizer(str(tok_dir / "vocab.txt"), model_max_length=64)
    tok.save_pretrained(d)
    return d


def test_greedy_match_by_hand():
    s = np.sqrt(0.5)
    cand = np.array([[1.0, 0.0], [0.0, 1.0], [s, s]])  # [CLS] x y ; weights 0 1 1
    ref = np.array([[1.0, 0.0], [s, -s]])  # x' and [SEP]-like token of weight 0
    p, r, f = rm.greedy_match(cand, ref, np.array([0, 1, 1]), np.array([1, 0]))
    # candidate token 1 (0, 1): best cosine max(0, -s) = 0; token 2 (s, s): max(s, 0) = s
    assert p == pytest.approx(s / 2)
    # reference token 0 (1, 0): best over all candidate tokens, [CLS] included: 1
    assert r == pytest.approx(1.0)
    assert f == pytest.approx(2 * (s / 2) / (s / 2 + 1))
    assert rm.greedy_match(cand, ref, np.zeros(3), np.array([1, 0])) == (0.0, 0.0, 0.0)


def test_bertscore_equals_the_bert_score_package(bert_dir):
    import bert_score

    scorer = rm.load_bertscore(bert_dir, num_layers=1)
    cands = [g for g in GENERATED if g]
    refs = [r for r, g in zip(REPORTS, GENERATED, strict=True) if g]
    refs = [r or "no acute process" for r in refs]
    s = rm.bertscore(scorer, cands, refs, batch_size=3)
    # batch_size=1: bert-score then pads no pair, as here
    P, R, F = bert_score.score(
        cands, refs, model_type=str(bert_dir), num_layers=1, idf=False, batch_size=1,
        device="cpu",
    )  # fmt: skip
    np.testing.assert_allclose(s.per_item["precision"], P.numpy(), atol=1e-5)
    np.testing.assert_allclose(s.per_item["recall"], R.numpy(), atol=1e-5)
    np.testing.assert_allclose(s.per_item["f1"], F.numpy(), atol=1e-5)
    assert s.corpus["f1"] == pytest.approx(float(F.mean()), abs=1e-5)
    assert s.corpus["layer"] == 1


def test_bertscore_empty_texts_layers_and_baseline(bert_dir, tmp_path):
    scorer = rm.load_bertscore(bert_dir)
    assert scorer.num_layers == 2  # an unknown model: the last layer
    s = rm.bertscore(scorer, ["mild edema", "", "mild edema"], ["mild edema", "edema", ""])
    assert len(scorer.encode("edema " * 100)) == 64  # cut at model_max_length
    assert s.per_item["f1"][0] == pytest.approx(1.0)
    assert s.per_item["f1"][1:] == [0.0, 0.0]
    base = tmp_path / "base.tsv"
    base.write_text("LAYER,P,R,F\n0,0.1,0.1,0.1\n1,0.2,0.2,0.2\n2,0.5,0.5,0.5\n")
    scaled = rm.load_bertscore(bert_dir, baseline=str(base))
    s2 = rm.bertscore(scaled, ["mild edema"], ["mild edema"])
    assert s2.per_item["f1"][0] == pytest.approx(1.0) and s2.corpus["rescaled"]
    s3 = rm.bertscore(scaled, ["mild edema"], ["the lungs are clear"])
    raw = rm.bertscore(scorer, ["mild edema"], ["the lungs are clear"])
    assert s3.per_item["f1"][0] == pytest.approx((raw.per_item["f1"][0] - 0.5) / 0.5)
    with pytest.raises(InputError, match="layer 7 asked for"):
        rm.load_bertscore(bert_dir, num_layers=7)
    with pytest.raises(InputError, match="cannot load a model"):
        rm.load_bertscore(tmp_path)


# --- together --------------------------------------------------------------------------------


def test_nothing_given_skips_every_metric_with_a_reason():
    got = rm.load_report_models()
    assert not got.any and set(got.skipped) == {"chexbert", "radgraph", "bertscore"}
    res, per = rm.score_reports(got, ["a"], ["b"])
    assert res["radgraph"] == {"skipped": "no RadGraph model directory given (--radgraph)"}
    assert per == [{}]
    md = "\n".join(rm.markdown_lines(res))
    assert "| F1-CheXbert | skipped: no CheXbert weights given (--chexbert) |" in md
    assert md.count("skipped:") == 3
    with pytest.raises(InputError, match="--chexbert needs --bert-tokenizer"):
        rm.load_report_models(chexbert="x.pth")


def test_score_reports_intervals_and_per_item(chexbert_file, tok_dir, bert_dir):
    got = rm.load_report_models(
        chexbert=str(chexbert_file[0]), bert_tokenizer=str(tok_dir), bertscore_model=str(bert_dir)
    )
    assert set(got.skipped) == {"radgraph"}
    res, per = rm.score_reports(got, GENERATED, REPORTS, bootstrap=50, seed=1)
    c = res["chexbert"]
    for key in rm.F1_KEYS:
        lo, hi = c[key + "_ci95"]
        assert 0.0 <= lo <= hi <= 1.0 and 0.0 <= c[key] <= 1.0
    assert c["uncertain_positive"] is True and c["count"] == 5
    b = res["bertscore"]
    assert b["f1_ci95"][0] <= b["f1"] <= b["f1_ci95"][1]
    assert len(per) == 5 and len(per[0]["chexbert_generated"]) == 14
    assert per[4]["bertscore_f1"] == 0.0  # empty generated report
    again, _ = rm.score_reports(got, GENERATED, REPORTS, bootstrap=50, seed=1)
    assert again["chexbert"]["micro_f1_14_ci95"] == c["micro_f1_14_ci95"]  # seeded
    md = "\n".join(rm.markdown_lines(res))
    assert "F1-CheXbert micro (14 observations)" in md and "BERTScore F1 (layer 2)" in md
    assert "| RadGraph F1 | skipped:" in md and "uncertain labels counted as positive" in md


class StubGenerator:
    """Just enough of `Generator` for `evaluate` without films, VQA or p(yes): each film's
    report (sampled or greedy) is a fixed text."""

    vqgan = None

    def __init__(self, texts):
        self.texts = texts

    def check_codes(self, codes):
        return codes

    def reports(self, codes, **kwargs):
        from llmcxr_jax.generate import Results

        return Results(values=list(self.texts[: len(codes)]))


def _eval_records(texts):
    return [
        {"id": f"r{i}", "findings": "", "impression": t, "codes": np.zeros(4, np.int32)}
        for i, t in enumerate(texts)
    ]


def test_evaluate_writes_report_metrics_and_skipped_rows(chexbert_file, tok_dir, tmp_path):
    import json

    from llmcxr_jax.eval import evaluate

    refs = [r for r in REPORTS if r] * 2
    gens = (GENERATED[:4] + ["Mild edema."]) * 2
    gens = gens[: len(refs)]
    records = _eval_records(refs)
    kw = dict(num_reports=1, vqa_questions=0, probability_score=False, progress=False)
    # nothing given: every metric is a "skipped" row, and torch-free
    res = evaluate.evaluate(StubGenerator(gens), records, tmp_path / "a", bootstrap=20, **kw)
    assert res["report_models"]["chexbert"]["skipped"].startswith("no CheXbert weights")
    md = (tmp_path / "a" / "results.md").read_text()
    assert "| BERTScore | skipped: no BERTScore model directory given" in md
    assert any("skipped: chexbert, radgraph, bertscore" in x for x in evaluate.summary_lines(res))
    scorers = rm.load_report_models(chexbert=str(chexbert_file[0]), bert_tokenizer=str(tok_dir))
    res = evaluate.evaluate(
        StubGenerator(gens), records, tmp_path / "b", bootstrap=20, report_scorers=scorers, **kw
    )
    c = res["report_models"]["chexbert"]
    assert res["report_models"]["source"] == "greedy" and c["count"] == len(refs)
    direct = rm.chexbert_scores(
        scorers.chexbert, gens, [evaluate._record_text(r, 2) for r in records]
    )
    assert c["micro_f1_14"] == pytest.approx(direct.corpus["micro_f1_14"])
    assert len(c["micro_f1_14_ci95"]) == 2
    on_disk = json.loads((tmp_path / "b" / "results.json").read_text())
    assert on_disk["report_models"]["chexbert"]["micro_f1_14"] == c["micro_f1_14"]
    rows = [json.loads(x) for x in (tmp_path / "b" / "reports.jsonl").read_text().splitlines()]
    assert len(rows[0]["model_scores"]["chexbert_generated"]) == 14
    md = (tmp_path / "b" / "results.md").read_text()
    assert "F1-CheXbert micro (5 observations)" in md and "| RadGraph F1 | skipped:" in md
    # items.jsonl: CheXbert's 14 labels of the reference and of every generated report
    items = [json.loads(x) for x in (tmp_path / "b" / "items.jsonl").read_text().splitlines()]
    assert len(items) == len(refs) and "prompt" not in items[0]  # no films without a VQ-GAN
    for item, row in zip(items, rows, strict=True):
        scores = row["model_scores"]
        want = dict(zip(rm.CHEXBERT_CLASSES, scores["chexbert_reference"], strict=True))
        assert item["chexbert_reference"] == want
        want = dict(zip(rm.CHEXBERT_CLASSES, scores["chexbert_generated"], strict=True))
        assert item["chexbert_greedy"] == item["chexbert_sampled_1"] == want
    first = (tmp_path / "a" / "items.jsonl").read_text().splitlines()[0]
    assert "chexbert_reference" not in json.loads(first)
    # the report-generation table: F1-CheXbert computed, RadGraph and BERTScore "—"
    ours = next(ln for ln in md.splitlines() if ln.startswith("| ours |"))
    cells = [c.strip() for c in ours.strip("|").split("|")]
    assert cells[5:7] == ["—", "—"] and "[" in cells[7] and "—" not in cells[7:]


def test_cli_bad_weights_file_is_one_line_before_anything_loads(tok_dir, tmp_path, capsys):
    from llmcxr_jax import cli

    junk = tmp_path / "chexbert.pth"
    junk.write_bytes(b"\x00garbage")
    argv = ["evaluate", "--checkpoint", str(tmp_path / "no-checkpoint"), "--dataset", "x"]
    argv += ["--out", str(tmp_path / "out"), "--chexbert", str(junk)]
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--bert-tokenizer", str(tok_dir)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llmcxr-jax evaluate: error: ")
    assert f"{junk}: not a readable torch checkpoint" in err[0]
    with pytest.raises(SystemExit):
        cli.main(argv)  # --chexbert without its tokenizer
    assert "--chexbert needs --bert-tokenizer" in capsys.readouterr().err


def test_evaluate_without_report_weights_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import sys; from llmcxr_jax.eval import evaluate, report_models as rm; "
        "rm.score_reports(rm.load_report_models(), ['a'], ['b']); "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    assert out.stdout.split() == ["False", "False"]


class _V4Tokenizer:
    """The tokenizer with transformers 4's `encode_plus` of a token list, which f1chexbert
    0.0.2 calls and transformers 5 removed: ids of the tokens framed by [CLS] ... [SEP]."""

    def __init__(self, tok):
        self.tok = tok

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def encode_plus(self, tokens):
        ids = self.tok.convert_tokens_to_ids(tokens)
        return {"input_ids": [self.tok.cls_token_id, *ids, self.tok.sep_token_id]}


def test_f1_chexbert_equals_the_f1chexbert_package(chexbert_file, tok_dir, bert_dir, tmp_path):
    import copy

    pkg = pytest.importorskip("f1chexbert.f1chexbert")
    hyps = [g or "no acute process" for g in GENERATED] * 3
    refs = [r or "mild edema" for r in REPORTS] + GENERATED[:4] + ["pleural effusion"] + REPORTS
    refs = [r or "possible consolidation" for r in refs]
    # the heads centred on these texts' mean [CLS] state (bias = -W mean), so that the labels
    # of a random encoder vary from text to text
    model = copy.deepcopy(chexbert_file[1])
    tok = transformers.BertTokenizer.from_pretrained(str(tok_dir))
    with torch.no_grad():
        states = [
            model.bert(torch.tensor([tok(" ".join(t.split()))["input_ids"]]))[0][0, 0]
            for t in hyps + refs
        ]
        mean = torch.stack(states).mean(0)
        for head in model.linear_heads:
            head.bias.copy_(-head.weight @ mean)
    path = tmp_path / "chexbert.pth"
    torch.save(
        {"model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path
    )
    # f1chexbert's own scorer, put together without its download: its bert_labeler over the
    # tiny BERT directory, then the same chexbert.pth loaded as F1CheXbert.__init__ loads it
    labeler = pkg.bert_labeler(pretrain_path=str(bert_dir))
    state = torch.load(path, map_location="cpu")["model_state_dict"]
    labeler.load_state_dict({k.replace("module.", ""): v for k, v in state.items()}, strict=False)
    scorer = pkg.F1CheXbert.__new__(pkg.F1CheXbert)
    torch.nn.Module.__init__(scorer)
    names5 = ["Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion"]
    names14 = list(rm.CHEXBERT_CLASSES)
    scorer.__dict__.update(
        refs_filename=None,
        hyps_filename=None,
        device=torch.device("cpu"),
        tokenizer=_V4Tokenizer(transformers.BertTokenizer.from_pretrained(str(tok_dir))),
        target_names=names14,
        target_names_5=names5,
        target_names_5_index=np.where(np.isin(rm.CHEXBERT_CLASSES, names5))[0],
    )
    scorer.model = labeler.eval()
    # F1CheXbert.forward's report step (its accuracy step calls a private sklearn function
    # whose signature sklearn 1.9 changed): classification_report of its get_label rows
    from sklearn.metrics import classification_report

    hyp_lab = [scorer.get_label(t) for t in hyps]
    ref_lab = [scorer.get_label(t) for t in refs]
    idx = scorer.target_names_5_index
    cr = classification_report(ref_lab, hyp_lab, target_names=names14, output_dict=True)
    cr5 = classification_report(
        np.array(ref_lab)[:, idx], np.array(hyp_lab)[:, idx], target_names=names5, output_dict=True
    )
    ours_labeler = rm.load_chexbert(path, tok_dir)
    np.testing.assert_array_equal(rm.chexbert_binary(ours_labeler.labels(hyps)), hyp_lab)
    np.testing.assert_array_equal(rm.chexbert_binary(ours_labeler.labels(refs)), ref_lab)
    ours = rm.chexbert_scores(ours_labeler, hyps, refs).corpus
    assert 0 < ours["micro_f1_14"] < 1  # not a degenerate case
    assert ours["micro_f1_14"] == pytest.approx(cr["micro avg"]["f1-score"])
    assert ours["macro_f1_14"] == pytest.approx(cr["macro avg"]["f1-score"])
    assert ours["micro_f1_5"] == pytest.approx(cr5["micro avg"]["f1-score"])
    assert ours["macro_f1_5"] == pytest.approx(cr5["macro avg"]["f1-score"])
