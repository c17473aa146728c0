"""How the evaluation forms its scores: labels of references and fractions of sampled reports."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llmcxr_jax.eval import evaluate, metrics
from llmcxr_jax.models.densenet import get_preset as dn_preset
from llmcxr_jax.models.vqgan import get_preset as vq_preset

AVERAGES = ("micro", "macro", "weighted")


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


# --- deterministic score, controls, reconstructions ----------------------------------------------

REPORTS = [
    "The heart size is normal. No pleural effusion or pneumothorax.",
    "Moderate left pleural effusion. Mild cardiomegaly.",
    "Right upper lobe consolidation, consistent with pneumonia.",
    "Small right apical pneumothorax. Lungs otherwise clear.",
]


class StubVQGAN(nnx.Module):
    """A weightless stand-in for a grey VQ-GAN (instant, unlike a real one's init): 32 x 32
    films, 4 x 4 = 16 codes; code c paints its 8 x 8 cell the grey level 2 c / 63 - 1, and the
    output has one channel (out_ch = 1), as the demo's VQ-GAN."""

    def __init__(self):
        self.config = vq_preset("tiny").replace(
            ch_mult=(1, 1, 2, 2), attn_resolutions=(), in_channels=1, out_ch=1
        )

    def decode(self, codes):
        cfg = self.config
        s, f = cfg.latent_size, cfg.downsample_factor
        x = codes.reshape(codes.shape[0], s, s).astype(jnp.float32) * 2 / (cfg.n_embed - 1) - 1
        return jnp.repeat(jnp.repeat(x, f, axis=1), f, axis=2)[..., None]


class StubClassifier(nnx.Module):
    """A stand-in for the CXR DenseNet (`evaluate.classify` calls `config`, `features` and
    `classifier`): pooled features are the 4 x 4 block means of the 16 x 16 input, the six
    logits a fixed random projection of them."""

    def __init__(self):
        self.config = dn_preset("tiny", num_classes=6, image_size=16)
        w = np.random.default_rng(0).normal(size=(16, 6)) / 1024.0
        self.w = nnx.Param(jnp.asarray(w, jnp.float32))

    def features(self, x):
        b = x.shape[0]
        pooled = x.reshape(b, 4, 4, 4, 4).mean(axis=(2, 4)).reshape(b, 16)
        return {"pooled": pooled}

    def classifier(self, pooled):
        return pooled @ self.w[...]


@pytest.fixture(scope="module")
def gen():
    from llmcxr_jax.data import instructions
    from llmcxr_jax.generate import Generator
    from llmcxr_jax.models.gpt_neox import GPTNeoX, get_preset
    from llmcxr_jax.tokenizer import MultimodalTokenizer

    vq = StubVQGAN()
    texts = REPORTS * 5 + list(instructions.CXR_TO_REPORT + instructions.REPORT_TO_CXR)
    tok = MultimodalTokenizer.train_bpe(
        texts + [instructions.INTRO], vocab_size=320, num_image_codes=vq.config.n_embed
    )
    cfg = get_preset("tiny", vocab_size=tok.vocab_size, vocab_pad_multiple=128)
    return Generator(GPTNeoX(cfg, rngs=nnx.Rngs(1)), tok, vq, batch_size=4)


def _codes(gen, n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, gen.tokenizer.num_image_codes, gen.num_codes) for _ in range(n)]


def test_presence_questions_are_the_training_templates():
    q = evaluate.PRESENCE_QUESTIONS
    assert list(q) == list(metrics.PAPER_CLASSES)
    assert q["No Finding"] == "Is this chest X-ray normal?"  # "yes" = normal
    assert q["Pleural Effusion"] == "Is there a pleural effusion?"
    assert q["Consolidation/Pneumonia"] == "Is there consolidation?"
    assert q["Lung Lesion"] == "Is there a lung nodule or mass?"


def test_answer_tokens_are_the_first_response_token_of_a_training_paragraph(gen):
    from llmcxr_jax.data import instructions

    tok, codes = gen.tokenizer, _codes(gen, 1)[0]
    q = "Is there a pneumothorax?"
    prompt, _ = tok.encode_paragraph(instructions.vqa_prompt(q, codes))
    want = []
    for a in ("yes", "no"):
        ids, mask = tok.encode_paragraph(instructions.vqa(q, a, codes))
        assert mask[len(prompt)] == 1 and mask[len(prompt) - 1] == 0  # the response starts here
        want.append(int(ids[len(prompt)]))
    assert gen.answer_token_ids(q) == want
    # `### Response:\n` is a special token: the answer is tokenised alone, no leading space
    assert want == [tok.encode_text("yes")[0], tok.encode_text("no")[0]]


def test_answer_probabilities_equal_softmax_of_a_full_forward(gen):
    from llmcxr_jax.data import instructions

    tok, model = gen.tokenizer, gen.model
    # 5 pairs (a padded second batch of 4) of two prompt lengths (left padding within a batch)
    questions = ["Is this chest X-ray normal?", "Is there a pneumothorax?"] * 2 + ["Is it?"]
    codes = _codes(gen, 5, seed=3)
    got = gen.answer_probabilities(codes, questions, ("yes", "no"))
    assert not got.failures
    # the reference: one plain causal forward of the prompts right-padded (a causal model's
    # logits at a row's last prompt token do not see the padding after it), no cache, no
    # left alignment, read at each row's last prompt position
    prompts = [
        tok.encode_paragraph(instructions.vqa_prompt(q, c))[0]
        for c, q in zip(codes, questions, strict=True)
    ]
    width = max(len(x) for x in prompts)
    batch = np.zeros((len(prompts), width), np.int32)
    for r, x in enumerate(prompts):
        batch[r, : len(x)] = x
    logits = np.asarray(nnx.jit(lambda m, x: m(x)[0])(model, batch), np.float64)
    yes, no = tok.encode_text("yes")[0], tok.encode_text("no")[0]
    for r, x in enumerate(prompts):
        last = logits[r, len(x) - 1, : tok.text_vocab_size]  # text ids only
        probs = np.exp(last - last.max())
        probs /= probs.sum()
        np.testing.assert_allclose(got.values[r], [probs[yes], probs[no]], rtol=2e-4, atol=1e-7)
    again = gen.answer_probabilities(codes[::-1], questions[::-1])  # other rows, other padding
    np.testing.assert_allclose(np.stack(again.values[::-1]), np.stack(got.values), rtol=2e-4)
    bad = gen.answer_probabilities([codes[0], np.arange(3)], ["Is there edema?", "x"])
    assert [f.index for f in bad.failures] == [1] and bad.values[0] is not None


def test_yes_scores():
    got = evaluate.yes_scores([np.array([0.3, 0.1]), np.array([0.0, 0.0]), np.array([0, 0.2])])
    np.testing.assert_allclose(got, [0.75, 0.5, 0.0])


def test_scored_with_controls_scores_item_i_against_the_output_for_d_i():
    y = np.array([[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0]] * 2, np.int8)
    s = y.astype(np.float64)  # perfect scores
    r = evaluate.scored_with_controls(y, s, bootstrap=200, seed=4)
    assert r["auroc"]["micro"] == 1.0 and r["auroc_ci95"]["micro"] == [1.0, 1.0]
    d = metrics.derangement(6, 4)
    want = evaluate._scored(y, s[d])
    for metric in ("auroc", "f1"):
        for avg in AVERAGES:
            assert r["mismatched"][metric][avg] == want[metric][avg]
    # no item gets its twin's (i +- 3) scores here, so each of the 6 positive entries scores 0
    # and ties with 24 of the 30 negatives (6 negatives score 1): U = 6 * 24 / 2 = 72 of 180
    assert ((d - np.arange(6)) % 3 != 0).all()
    assert r["mismatched"]["auroc"]["micro"] == pytest.approx(72 / 180)
    lo, hi = r["mismatched"]["auroc_ci95"]["micro"]
    assert lo <= r["mismatched"]["auroc"]["micro"] <= hi
    assert "auroc_ci95" not in evaluate.scored_with_controls(y, s, bootstrap=0)


def test_psnr_by_hand_and_grey_films():
    real = np.zeros((2, 4, 4, 3))
    recon = np.stack([np.full((4, 4, 3), 0.2), np.zeros((4, 4, 3))])
    # MSE 0.04 -> 10 log10(4 / 0.04) = 20 dB; identical -> floored MSE 1e-10 -> 106.02 dB
    np.testing.assert_allclose(
        evaluate.psnr_per_film(real, recon), [20.0, 10 * np.log10(4e10)], rtol=1e-12
    )
    grey = np.full((2, 4, 4, 1), 0.2)
    rgb = np.concatenate([np.full((2, 4, 4, 1), v) for v in (0.1, 0.2, 0.3)], axis=-1)
    a, b = evaluate._same_channels(rgb, grey)
    assert a.shape == b.shape == (2, 4, 4, 1)
    np.testing.assert_allclose(a, 0.2)  # the channel mean of the real film
    np.testing.assert_allclose(evaluate.psnr_per_film(a, b), 10 * np.log10(4e10))
    x, y = evaluate._same_channels(rgb, rgb)
    assert x is rgb and y is rgb


def _records(gen, texts):
    import io

    from PIL import Image

    from llmcxr_jax.data import labeler

    labels = labeler.label_reports(texts)
    codes = _codes(gen, len(texts), seed=1)
    out = []
    for i, t in enumerate(texts):
        buf = io.BytesIO()
        px = np.random.default_rng(i).integers(0, 256, (40, 40), dtype=np.uint8)
        Image.fromarray(px, "L").save(buf, format="PNG")
        image = buf.getvalue() if i != 3 else b""  # record 3 holds no pixels
        out.append(
            {"id": f"r{i}", "findings": "", "impression": t, "codes": codes[i],
             "labels": labels[i], "details": "", "image": image}
        )  # fmt: skip
    return out


def _inside(value, ci):
    return ci[0] - 1e-9 <= value <= ci[1] + 1e-9


def test_evaluate_end_to_end_intervals_controls_reconstructions(gen, tmp_path):
    import json

    from llmcxr_jax import decode

    clf = StubClassifier()
    records = _records(gen, REPORTS * 2)
    # greedy and 48 new tokens: reports, greedy reports and VQA answers share one program
    res = evaluate.evaluate(
        gen, records, tmp_path, classifier=clf, num_reports=1, sampler=decode.GREEDY,
        max_report_tokens=48, vqa_questions=1, bootstrap=200, progress=False, seed=3,
        diversity_films=3,
    )  # fmt: skip
    assert res["settings"]["bootstrap"] == {"resamples": 200, "fid_resamples": 200, "level": 0.95}
    for key in ("cxr_to_report", "cxr_to_report_prob", "report_to_cxr"):
        r = res[key]
        for avg in AVERAGES:
            for row in (r, r["mismatched"]):
                if not np.isnan(row["auroc"][avg]):
                    assert _inside(row["auroc"][avg], row["auroc_ci95"][avg]), (key, avg)
                # F1 moves in jumps as resampling shifts class supports: a percentile interval
                # need not hold its point estimate, so only its order is checked
                lo, hi = row["f1_ci95"][avg]
                assert 0.0 <= lo <= hi <= 1.0
    c2r = res["cxr_to_report"]
    # greedy sampling with one report: the score is the greedy report's labels
    assert c2r["greedy_count"] == 8 and _inside(
        c2r["greedy_exact_match"], c2r["greedy_exact_match_ci95"]
    )
    prob = res["cxr_to_report_prob"]
    assert prob["questions"] == evaluate.PRESENCE_QUESTIONS
    assert prob["answer_tokens"]["yes"]["id"] == gen.tokenizer.encode_text("yes")[0]
    r2c = res["report_to_cxr"]
    assert _inside(r2c["fid"], r2c["fid_ci95"])
    assert "auroc_ci95" in r2c["real_films"]
    assert _inside(res["vqa"]["overall"], res["vqa"]["overall_ci95"])
    rec = res["reconstruction"]
    assert rec["films"] == 7 and rec["no_pixels"] == 1
    assert _inside(rec["psnr"], rec["psnr_ci95"])
    assert -1.0 <= rec["ssim"] <= 1.0 and _inside(rec["ssim"], rec["ssim_ci95"])
    # film metrics: no xrv weights (a skipped row), 32 px films (2 MS-SSIM scales), one film
    # per report and a second for 3 reports (diversity)
    films = res["films"]
    assert films["skipped"] == {"fid_xrv": "no --xrv-weights"} and "fid_xrv" not in films
    assert films["generated_films"] == 8 and films["ms_ssim_scales"] == 2
    assert films["ms_ssim_real_count"] == 7  # record 3 holds no pixels
    assert films["diversity_count"] == 3 and films["diversity_distinct_count"] == 8
    assert films["diversity_source"] == "a second film (seed 5) for 3 of the reports"
    assert films["diversity"] == pytest.approx(1.0)  # greedy: the second film is the first
    for key in ("ms_ssim_real", "ms_ssim_real_mismatched", "diversity", "diversity_distinct"):
        assert 0.0 <= films[key] <= 1.0 and _inside(films[key], films[f"{key}_ci95"]), key
    for avg in ("micro", "macro"):
        want = rec["reconstructions"]["auroc"][avg] / rec["real_films"]["auroc"][avg]
        assert rec["kept"][avg] == pytest.approx(want)
    # outputs
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert (
        on_disk["cxr_to_report"]["mismatched"]["auroc_ci95"]["micro"]
        == (c2r["mismatched"]["auroc_ci95"]["micro"])
    )
    rows = [json.loads(x) for x in (tmp_path / "reports.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(isinstance(r["greedy"], str) for r in rows)
    # report text metrics of the greedy reports, per film in reports.jsonl
    text = res["report_text"]
    assert text["source"] == "greedy" and text["count"] == 8 and 0 <= text["rouge_l"] <= 1
    keys = {*(f"bleu_{k}" for k in range(1, 5)), "rouge_l", "cider_d"}
    assert set(rows[0]["text_scores"]) == keys
    for png in ("samples.png", "recon.png"):
        assert (tmp_path / png).stat().st_size > 0
    md = (tmp_path / "results.md").read_text()
    assert "mismatched inputs (control)" in md and evaluate.PROB_ROW in md
    assert "### Film metrics" in md and "SSIM (Gaussian window 11" in md
    assert (
        "| FID, torchxrayvision DenseNet-121 features (generated vs real) | "
        "skipped: no --xrv-weights |"
    ) in md
    assert "Diversity pairs: a second film (seed 5) for 3 of the reports." in md
    assert "| BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | ROUGE-L | CIDEr-D |" in md
    lo, hi = c2r["auroc_ci95"]["micro"]
    assert f"{c2r['auroc']['micro']:.3f} [{lo:.3f}, {hi:.3f}]" in md
    lines = evaluate.summary_lines(res)
    assert any(ln.startswith("  control, mismatched films: AUROC micro") for ln in lines)
    assert any("reconstruction PSNR" in ln and "dB" in ln for ln in lines)
    assert any(ln.startswith("clinical information kept") for ln in lines)
    assert any(ln.startswith("FID") and "[" in ln for ln in lines)
    assert any(ln.startswith("diversity: MS-SSIM") and "[" in ln for ln in lines)
    assert any(ln.startswith("VQ-GAN reconstruction SSIM") for ln in lines)
    assert any(ln.startswith("report text (greedy") and "CIDEr-D" in ln for ln in lines)
    # per-item outputs: one row per item in items.jsonl and items.csv, the same columns
    _check_items(tmp_path, res, rows)
    # the report-generation table: ours (BERTScore etc. not run: "—"), then published rows
    assert "### Report generation" in md
    ours = next(ln for ln in md.splitlines() if ln.startswith("| ours |"))
    cells = [c.strip() for c in ours.strip("|").split("|")]
    assert cells[1] == f"{100 * text['bleu_1']:.1f}" and cells[5:] == ["—"] * 6
    assert "BERTScore: no BERTScore model directory given (--bertscore-model)" in md


ITEM_COLUMNS = [
    *("id", "reference", "hypothesis", "hypothesis_from", "greedy", "sampled_1"),
    *("prompt", "img_savename", "film_1"),
    *(f"bleu_{k}" for k in range(1, 5)),
    *("rouge_l", "cider_d", "labels_reference", "labels_greedy", "labels_sampled_1"),
    *("ms_ssim_real", "ms_ssim_real_mismatched", "diversity", "recon_psnr", "recon_ssim"),
]


def _six(text):
    """Our labeler's six 0/1 labels of one report, by class."""
    labels = evaluate.binary_labels([text])[0].tolist()
    return dict(zip(metrics.PAPER_CLASSES, labels, strict=True))


def _check_items(out, res, reports_rows):
    """items.jsonl / items.csv of the end-to-end run (8 items, one sampled and one greedy
    report each, one 32 x 32 grey film each, record 3 without stored pixels)."""
    import csv
    import json

    from PIL import Image

    rows = [json.loads(x) for x in (out / "items.jsonl").read_text().splitlines()]
    assert len(rows) == res["num_items"] == 8
    assert all(list(r) == ITEM_COLUMNS for r in rows)
    with open(out / "items.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 8 and list(table[0]) == ITEM_COLUMNS
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary left
    by_id = {r["id"]: r for r in reports_rows}
    for r, c in zip(rows, table, strict=True):
        ref = by_id[r["id"]]
        assert r["reference"] == c["reference"] == c["prompt"] == ref["reference"]
        assert r["hypothesis"] == r["greedy"] == c["hypothesis"] == ref["greedy"]
        assert r["hypothesis_from"] == "greedy" and r["sampled_1"] == ref["generated"][0]
        for key, value in ref["text_scores"].items():
            assert r[key] == value and float(c[key]) == value
        # our labeler's six classes, as the tables score them
        labels = _six(r["greedy"])
        assert r["labels_greedy"] == labels and json.loads(c["labels_greedy"]) == labels
        assert r["labels_reference"] == _six(r["reference"])
        # the generated film: a PNG of the VQ-GAN's grey 32 x 32 output
        assert r["img_savename"] == r["film_1"] == c["film_1"] == f"films/{r['id']}_1.png"
        with Image.open(out / r["film_1"]) as im:
            assert im.format == "PNG" and im.size == (32, 32) and im.mode == "L"
    # per-item film metrics: their means are the figures; empty where they do not exist
    films, rec = res["films"], res["reconstruction"]
    for key, want in (
        ("ms_ssim_real", films["ms_ssim_real"]),
        ("ms_ssim_real_mismatched", films["ms_ssim_real_mismatched"]),
        ("diversity", films["diversity"]),
        ("recon_psnr", rec["psnr"]),
        ("recon_ssim", rec["ssim"]),
    ):
        got = [r[key] for r in rows if r[key] is not None]
        assert np.mean(got) == pytest.approx(want), key
    assert rows[3]["ms_ssim_real"] is None and table[3]["ms_ssim_real"] == ""  # no pixels
    assert sum(r["diversity"] is not None for r in rows) == 3  # --diversity-films 3


def test_film_stems_are_safe_file_names_and_unique():
    got = evaluate.film_stems(["p10/s5/a", "p10_s5_a", ".hidden", "", "x y"])
    assert got == ["p10_s5_a", "p10_s5_a-1", "hidden", "item", "x_y"]


def test_report_generation_table_ours_published_and_skipped_rows():
    from llmcxr_jax.eval import report_models

    text = {"bleu_1": 0.4, "bleu_4": 0.1, "rouge_l": 0.3, "cider_d": 0.25, "source": "greedy"}
    chexbert = {"micro_f1_14": 0.5, "macro_f1_14": 0.3, "micro_f1_5": 0.55, "macro_f1_5": 0.45}
    chexbert.update(micro_f1_14_ci95=[0.4, 0.6], uncertain_positive=True)
    results = {
        "report_text": text,
        "report_models": {
            "chexbert": chexbert,
            "radgraph": {"skipped": "no RadGraph model directory given (--radgraph)"},
            "bertscore": {"skipped": "no BERTScore model directory given (--bertscore-model)"},
            "source": "greedy",
        },
    }
    lines = evaluate.report_generation_table(results, "ours (phantoms)")
    headers = [h for _, h in metrics.REPORT_TABLE_COLUMNS]
    assert headers == [
        *("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr", "BERTScore", "RadGraph F1"),
        *(f"F1-CheXbert {a}-{n}" for n in (14, 5) for a in ("micro", "macro")),
    ]
    assert "| Model | " + " | ".join(headers) + " |" in lines

    def cells(prefix):
        (line,) = [ln for ln in lines if ln.startswith(f"| {prefix}")]
        return [c.strip() for c in line.strip("|").split("|")][1:]

    # ours in percent, with the interval where there is one; skipped metrics as "—"
    assert cells("ours (phantoms) |") == [
        *("40.0", "10.0", "30.0", "25.0", "—", "—"),
        *("50.0 [40.0, 60.0]", "30.0", "55.0", "45.0"),
    ]
    # the published rows: their figures under their metrics, empty cells elsewhere
    note = "(published, MIMIC-CXR; not comparable with phantom figures)"
    published = [ln for ln in lines if note in ln]
    assert len(published) == len(metrics.PUBLISHED_REPORT_ROWS) == 5
    assert cells(f"CheXagent {note}") == ["", "", "", "", "", "", "58.0", "44.9", "62.5", "55.3"]
    assert cells(f"MAIRA-2 {note}") == ["", "23.4", "38.4", "", "", "34.6", "", "", "", ""]
    assert cells(f"LLaVA-Rad, third-party pipeline {note}")[2] == "22.2"
    md = "\n".join(lines)
    assert (
        "—: not computed here. BERTScore: no BERTScore model directory given (--bertscore-model); "
        "RadGraph F1: no RadGraph model directory given (--radgraph)."
    ) in md
    assert "CheXagent: CheXagent's README" in md and "uncertain labels counted as positive" in md
    # the published figures are stated once, as percentages, with a source
    for row in metrics.PUBLISHED_REPORT_ROWS:
        assert row["source"] and set(row["figures"]) <= {k for k, _ in metrics.REPORT_TABLE_COLUMNS}
        assert all(0 < v < 100 for v in row["figures"].values())
    assert set(report_models.F1_KEYS) <= {k for k, _ in metrics.REPORT_TABLE_COLUMNS}
    # nothing generated: no table
    assert evaluate.report_generation_table({"num_items": 1}) == []


def test_write_items_round_trips_reports_with_line_breaks_quotes_and_nan(tmp_path):
    import csv
    import json

    rows = [
        {"id": "a", "hypothesis": 'one\rtwo\nthree, "four"', "bleu_1": float("nan"),
         "labels_greedy": {"Edema": 1}, "film_1": None},
        {"id": "b", "hypothesis": "plain", "bleu_1": np.float64(0.1),
         "labels_greedy": None, "film_1": "films/b_1.png"},
    ]  # fmt: skip
    evaluate.write_items(tmp_path, rows)
    back = [json.loads(x) for x in (tmp_path / "items.jsonl").read_text().splitlines()]
    assert back[0]["bleu_1"] is None and back[1]["bleu_1"] == 0.1  # NaN: null
    assert back[0]["hypothesis"] == rows[0]["hypothesis"]
    with open(tmp_path / "items.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 2 and table[0]["hypothesis"] == rows[0]["hypothesis"]
    assert table[0]["bleu_1"] == "" and table[1]["bleu_1"] == "0.1"
    assert json.loads(table[0]["labels_greedy"]) == {"Edema": 1} and table[1]["labels_greedy"] == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items.csv", "items.jsonl"]
