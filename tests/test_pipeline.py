"""The Grain LM pipeline: paragraphs in == paragraphs out, masks, packing, exact resume."""

import json

import numpy as np
import pytest

from llmcxr_jax import sharding
from llmcxr_jax.data import instructions, pipeline
from llmcxr_jax.tokenizer import MultimodalTokenizer

NUM_CODES, N_EMBED = 16, 32
FINDINGS = [
    "The heart is enlarged.",
    "Small left pleural effusion.",
    "Lungs are clear.",
    "There is a right upper lobe consolidation.",
    "No pneumothorax.",
]


def _records(n=40, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        lab = np.full(14, -2, np.int8)
        lab[rng.integers(0, 14)] = rng.choice([1, 0])
        r = {
            "id": f"img{i:03d}",
            "subject_id": f"p{i // 3}",
            "study_id": f"s{i}",
            "view": ["PA", "AP", "LATERAL"][i % 3],
            "study_datetime": f"2020010{i % 9}T1200{i:02d}",
            "findings": " ".join(rng.choice(FINDINGS, 2)),
            "impression": rng.choice(FINDINGS),
            "labels": lab,
            "details": "[]",
            "codes": rng.integers(0, N_EMBED, NUM_CODES).astype(np.int16),
        }
        out.append(r)
    out[3]["codes"] = np.zeros(0, np.int16)  # no codes
    out[4]["codes"] = np.zeros(NUM_CODES - 1, np.int16)  # wrong count
    out[5]["codes"][0] = N_EMBED  # code out of range
    out[6]["findings"] = out[6]["impression"] = ""  # no report text
    return out


@pytest.fixture(scope="module")
def tok():
    texts = [r["findings"] + " " + r["impression"] for r in _records()]
    texts += list(instructions.CXR_TO_REPORT + instructions.REPORT_TO_CXR)
    texts += [instructions.paragraph_text("q?", "<image>", "yes no left right")] * 3
    return MultimodalTokenizer.train_bpe(texts, vocab_size=500, num_image_codes=N_EMBED)


DOLLY = [
    {
        "instruction": f"Count to {k}.",
        "context": "",
        "response": " ".join(map(str, range(k))),
        "category": "",
    }
    for k in range(1, 30)
]


def _unpack(batch):
    """Each packed segment back to the full id sequence it came from, with its mask."""
    out = []
    for row in range(batch["tokens"].shape[0]):
        seg = batch["segment_ids"][row]
        for s in np.unique(seg[seg > 0]):
            idx = np.flatnonzero(seg == s)
            assert (batch["positions"][row][idx] == np.arange(len(idx))).all()
            ids = np.concatenate([batch["tokens"][row][idx], batch["targets"][row][idx[-1:]]])
            out.append((ids, batch["loss_mask"][row][idx]))
        assert not batch["loss_mask"][row][seg == 0].any()  # padding never trains
    return out


@pytest.mark.parametrize("mask_mode", ["response", "paragraph"])
def test_packed_batches_decode_to_the_paragraphs_that_went_in(tok, mask_mode):
    counters = pipeline.Counters()
    examples = pipeline.ImageTextExamples(
        _records(), stage=1, num_codes=NUM_CODES, n_embed=N_EMBED, counters=counters
    )
    assert counters.as_dict() == {"missing_codes": 1, "invalid_codes": 2, "no_report_text": 1}
    instr = pipeline.InstructionExamples(DOLLY)
    known = {examples[k].text for k in range(len(examples))} | {
        instr[k].text for k in range(len(instr))
    }
    batches = pipeline.LMBatches(
        pipeline.paragraph_dataset(examples, instr),
        tok,
        max_len=256,
        batch_size=4,
        mask_mode=mask_mode,
        counters=counters,
    )
    seen, n_image = 0, 0
    for _ in range(6):
        b = batches.next()
        assert b["tokens"].shape == (4, 256) and b["tokens"].dtype == np.int32
        for ids, mask in _unpack(b):
            p = tok.decode_paragraph(ids)
            assert p.text in known
            _, want = tok.encode_paragraph(p, mask_mode)
            np.testing.assert_array_equal(mask, want[1:])  # the mask of the target tokens
            img = np.flatnonzero(tok.is_image(ids))
            if p.codes is not None:
                n_image += 1
                assert img.size == NUM_CODES and img[-1] - img[0] == NUM_CODES - 1
                assert ids[img[0] - 1] == tok.image_begin_id
                assert ids[img[-1] + 1] == tok.image_end_id
            else:
                assert img.size == 0
            seen += 1
    assert seen > 20 and 0.6 < n_image / seen < 0.95  # mixed 0.8 : 0.2


def test_tasks_stage_rules_and_vqa(tok):
    recs = _records()
    s1 = pipeline.ImageTextExamples(recs, stage=1, num_codes=NUM_CODES, n_embed=N_EMBED)
    tasks = [e.task for e in s1.examples]
    assert abs(tasks.count("report") - tasks.count("image")) <= 1  # one direction per image
    assert len({e.record for e in s1.examples if e.task != "vqa"}) == tasks.count(
        "report"
    ) + tasks.count("image")
    s2 = pipeline.ImageTextExamples(recs, stage=2, num_codes=NUM_CODES, n_embed=N_EMBED)
    recs2 = {e.record for e in s2.examples if e.task != "vqa"}
    assert recs2 and all(recs[i]["view"] in ("PA", "AP") for i in recs2)
    assert len({recs[i]["subject_id"] for i in recs2}) == len(recs2)  # one study per patient
    for i in recs2:  # IMPRESSION only
        assert s2.texts[i] == recs[i]["impression"]
    vqa_recs = {e.record for e in s1.examples if e.task == "vqa"}
    assert vqa_recs and vqa_recs <= {e.record for e in s2.examples}  # VQA from the stage-2 set
    none = pipeline.ImageTextExamples(
        recs, stage=1, num_codes=NUM_CODES, n_embed=N_EMBED, vqa_mode="none"
    )
    assert all(e.task != "vqa" for e in none.examples)


def test_resume_at_step_k_gives_the_same_batches(tok):
    def make():
        ex = pipeline.ImageTextExamples(_records(), stage=1, num_codes=NUM_CODES, n_embed=N_EMBED)
        return pipeline.LMBatches(
            pipeline.paragraph_dataset(ex, pipeline.InstructionExamples(DOLLY), seed=3),
            tok,
            max_len=128,
            batch_size=2,
        )

    a = make()
    for _ in range(5):
        a.next()
    state = json.loads(json.dumps(a.get_state()))  # it survives JSON (the checkpoint's format)
    want = [a.next() for _ in range(4)]
    b = make()
    b.set_state(state)
    for x in want:
        y = b.next()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_too_long_paragraphs_are_dropped_and_counted(tok):
    long = [
        {"instruction": "Repeat.", "context": "", "response": "word " * 400, "category": ""}
    ] + DOLLY[:3]
    counters = pipeline.Counters()
    batches = pipeline.LMBatches(
        pipeline.paragraph_dataset(None, pipeline.InstructionExamples(long)),
        tok,
        max_len=64,
        batch_size=2,
        counters=counters,
    )
    for _ in range(4):
        b = batches.next()
        assert (b["segment_ids"] > 0).sum() > 0
    assert counters.as_dict()["too_long"] >= 1


def test_global_batches_on_a_mesh(tok):
    mesh = sharding.make_mesh((2, 1, 1))
    ex = pipeline.ImageTextExamples(_records(), stage=1, num_codes=NUM_CODES, n_embed=N_EMBED)
    b = pipeline.LMBatches(
        pipeline.paragraph_dataset(ex, None), tok, max_len=128, batch_size=4, mesh=mesh
    ).next()
    assert b["tokens"].shape == (4, 128) and len(b["tokens"].sharding.device_set) == 2
