"""The dolly template, the four tasks, direction assignment, and VQA synthesis and reading."""

import json

import numpy as np
import pytest

from llmcxr_jax.data import instructions, vqa
from llmcxr_jax.data.labels import OBSERVATIONS

INTRO = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request."
)


def test_template_by_hand():
    assert instructions.paragraph_text("Do X.", "some input", "done") == (
        f"{INTRO}\n\n### Instruction:\nDo X.\n\nInput:\nsome input\n\n### Response:\ndone"
        "\n\n### End"
    )
    assert instructions.prompt("Do X.") == f"{INTRO}\n\n### Instruction:\nDo X.\n\n### Response:\n"


def test_phrasings_and_deterministic_choice():
    assert len(set(instructions.CXR_TO_REPORT)) >= 10
    assert len(set(instructions.REPORT_TO_CXR)) >= 10
    a = instructions.cxr_to_report("r", np.zeros(4), seed=1, key="img1")
    assert a == instructions.cxr_to_report("r", np.zeros(4), seed=1, key="img1")
    picks = {
        instructions.cxr_to_report("r", np.zeros(4), seed=1, key=f"i{k}").text for k in range(100)
    }
    assert len(picks) >= 8  # the phrasings are all used


def test_each_image_serves_one_direction_half_each():
    ids = [f"id{k:03d}" for k in range(101)]
    d = instructions.assign_directions(ids[::-1])  # input order does not matter
    assert [d[i] for i in sorted(ids)[:4]] == ["report", "image", "report", "image"]
    counts = list(d.values())
    assert abs(counts.count("report") - counts.count("image")) <= 1
    d1, d2 = instructions.assign_directions(ids, 1), instructions.assign_directions(ids, 2)
    assert d1 != d2 and d1 == instructions.assign_directions(ids, 1)


def test_dolly_reader_counts_bad_lines(tmp_path):
    f = tmp_path / "dolly.jsonl"
    f.write_text(
        "\n".join(
            [
                json.dumps({"instruction": "Name a colour.", "context": "", "response": "Blue."}),
                "{not json",
                json.dumps({"instruction": "x"}),
                json.dumps(
                    {
                        "instruction": "Sum?",
                        "context": "1 and 2",
                        "response": "3",
                        "category": "closed_qa",
                    }
                ),
            ]
        )
    )
    records, problems = instructions.read_dolly_jsonl(f)
    assert [r["response"] for r in records] == ["Blue.", "3"]
    assert len(problems) == 2 and problems[0].startswith(f"{f}:2: not JSON")


def _labels(**values):
    lab = np.full(14, -2, np.int8)
    for name, v in values.items():
        lab[OBSERVATIONS.index(name.replace("_", " "))] = v
    return lab


def test_vqa_from_labels_and_details():
    lab = _labels(Pleural_Effusion=1, Pneumothorax=0, Edema=-1)
    details = json.dumps(
        [{"name": "pleural_effusion", "side": "left", "zone": None, "severity": "small"}]
    )
    qas = vqa.synthesize(lab, details, seed=0, key="a", max_questions=10)
    by_type = {q.qtype: q for q in qas}
    presence = {q.question: q.answer for q in qas if q.qtype == "presence"}
    assert set(presence.values()) == {"yes", "no"} and len(presence) == 2  # edema is uncertain
    assert by_type["side"].answer == "left" and by_type["severity"].answer == "small"
    assert by_type["side"].category == "Pleural Effusion"
    assert by_type["abnormalities"].answer == "pleural effusion"
    assert by_type["normal"].answer in ("yes", "no")
    assert qas == vqa.synthesize(lab, details, seed=0, key="a", max_questions=10)
    normal = vqa.synthesize(_labels(No_Finding=1), seed=0, key="n", max_questions=10)
    assert {q.qtype: q.answer for q in normal}["abnormalities"] == "none"
    assert {q.category for q in normal} == {"No Finding"}


def test_llmcxr_vqa_file_is_read_without_eval(tmp_path):
    f = tmp_path / "vqa.txt"
    f.write_text(
        "[{'question': 'Is there edema?', 'answer': 'Yes.'}, "
        "{'question': 'Any effusion?', 'answer': 'no'}]"
    )
    qas = vqa.read_llmcxr_vqa(f)
    assert [q.answer for q in qas] == ["Yes.", "no"]
    assert vqa.normalize_answer("Yes.") == "yes"
    f.write_text("[__import__('os').system('echo pwned')]")
    with pytest.raises(ValueError, match="not a Python-literal list"):
        vqa.read_llmcxr_vqa(f)
    f.write_text("[{'question': 1}]")
    with pytest.raises(ValueError, match="item 0"):
        vqa.read_llmcxr_vqa(f)
