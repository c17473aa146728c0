"""Report sections and the LLM-CXR stage rules on realistic MIMIC-style reports."""

from __future__ import annotations

import pytest
from fixtures import MIMIC_REPORTS

from llmcxr_jax.data import reports


def test_classic_report_sections():
    s = reports.extract_sections(MIMIC_REPORTS["classic"])
    assert set(s) == set(reports.SECTIONS)
    assert s["findings"] == (
        "There is no focal consolidation, pleural effusion or pneumothorax. Bilateral nodular "
        "opacities that most likely represent nipple shadows. The cardiomediastinal silhouette "
        "is normal. Clips project over the left lung, potentially within the breast. The imaged "
        "upper abdomen is unremarkable. Chronic deformity of the posterior left sixth and "
        "seventh ribs are noted."
    )
    assert s["impression"] == "No acute cardiopulmonary process."
    assert s["examination"] == "CHEST (PA AND LAT)"
    assert s["indication"] == "___F with new onset ascites // eval for infection"
    assert s["technique"] == "Chest PA and lateral"
    assert s["comparison"] == "None."
    assert s["preamble"] == ""  # the FINAL REPORT title is not text


def test_impression_only_and_history():
    s = reports.extract_sections(MIMIC_REPORTS["impression_only"])
    assert s["findings"] == ""
    assert s["impression"] == (
        "Portable AP upright chest radiograph demonstrates low lung volumes. No focal "
        "consolidation. Mild cardiomegaly is unchanged."
    )
    assert s["history"] == "___-year-old female with shortness of breath."
    assert s["comparison"] == "Chest radiograph from ___."


def test_findings_and_impression_goes_to_impression_only():
    s = reports.extract_sections(MIMIC_REPORTS["wet_read_combined"])
    assert s["findings"] == ""
    assert s["impression"] == (
        "Heart size is normal. Lungs are clear. No pleural effusion or pneumothorax."
    )
    assert s["indication"] == "Chest pain."
    assert s["wet_read"].startswith("___ ___ ___ 3:37 PM No pneumothorax.")
    for header in ("FINDINGS/IMPRESSION:", "Findings and Impression:", "IMPRESSION AND FINDINGS:"):
        s = reports.extract_sections(f"{header} Clear lungs.")
        assert (s["findings"], s["impression"]) == ("", "Clear lungs."), header


def test_findings_only_and_no_sections():
    s = reports.extract_sections(MIMIC_REPORTS["findings_only"])
    assert s["findings"] == (
        "Sternotomy wires are intact. Small left pleural effusion with adjacent atelectasis."
    )
    assert s["impression"] == ""
    assert s["indication"] == "___M s/p CABG. Eval for effusion."
    s = reports.extract_sections(MIMIC_REPORTS["no_sections"])
    assert s["findings"] == s["impression"] == ""
    # an unknown capitalised header ends the section before it; its text is "other"
    assert s["indication"] == "___F with cough"
    assert s["other"] == "The lungs are clear. The heart is normal in size."


def test_inline_title_case_headers_and_placeholders():
    s = reports.extract_sections(MIMIC_REPORTS["inline_titlecase"])
    assert s["examination"] == "CHEST PA/LAT."
    assert s["comparison"] == "None."
    assert s["findings"] == (
        "The heart is mildly enlarged. There is mild pulmonary vascular congestion."
    )
    assert s["impression"] == "Mild cardiomegaly and vascular congestion."
    # _____ -> ___ and no space before the final period
    assert s["notification"] == (
        "The findings were discussed with Dr. ___ by Dr. ___ on the telephone on ___ at 10:15 AM."
    )


def test_header_variants_repeats_and_mid_sentence_words():
    s = reports.extract_sections(MIMIC_REPORTS["variants"])
    # "Overall impression:" in mid-sentence is text; FINDINGS alone on its line is a header
    assert s["indication"] == "Evaluation of the patient with fever. Overall impression: unwell."
    assert s["findings"] == (
        "Right lower lobe opacity. Otherwise the overall impression: clear lungs."
    )
    # IMPRESSIONS (space before the colon) and CONCLUSION both go to the impression, in order
    assert s["impression"] == "Right lower lobe pneumonia. Pneumonia, as above."
    assert s["recommendations"] == "Follow-up radiograph in 6 weeks."


@pytest.mark.parametrize(
    "text",
    [
        "IMPRESSION: A.",
        "Impression: A.",
        "impression:A.",
        "IMPRESSIONS: A.",
        "I M P: x. IMPRESSION  : A.",
        "Findings: B. Impression: A.",
        "FINDINGS: B.  IMPRESSION: A.",
        "FINDINGS:\n\n B.\n\n IMPRESSION:\n\n A.\n",
        "CONCLUSION: A.",
        "Conclusions:\tA.",
    ],
)
def test_impression_spellings(text):
    assert reports.extract_sections(text)["impression"] == "A."


def test_bytes_and_empty_input():
    s = reports.extract_sections(MIMIC_REPORTS["classic"].encode())
    assert s["impression"] == "No acute cardiopulmonary process."
    assert reports.extract_sections("")["findings"] == ""
    assert reports.extract_sections("   \n\n ")["impression"] == ""
    assert reports.extract_sections("no headers at all")["preamble"] == "no headers at all"


def test_clean_text_and_report():
    assert reports.clean_text("  a \n\n b\t c  ") == "a b c"
    assert reports.clean_text("Dr. ________ ,  seen ___ .") == "Dr. ___, seen ___."
    cleaned = reports.clean_report(MIMIC_REPORTS["classic"])
    assert cleaned.startswith("FINAL REPORT\nEXAMINATION: CHEST (PA AND LAT)\n\nINDICATION:")
    assert "\n\n\n" not in cleaned and "  " not in cleaned
    assert cleaned.endswith("IMPRESSION:\n\nNo acute cardiopulmonary process.")


def test_stage_texts():
    assert reports.stage1_text("Lungs clear.", "Normal.") == "Lungs clear. Normal."
    assert reports.stage1_text("", "Normal.") == "Normal."  # falls back to the impression
    assert reports.stage1_text("Lungs clear.", "") == "Lungs clear."  # findings-only is kept
    assert reports.stage1_text(" ", "\n") is None
    assert reports.stage1_text(b"Lungs  clear.", b"Normal.") == "Lungs clear. Normal."
    assert reports.stage2_text("  Normal.\n") == "Normal."
    assert reports.stage2_text("") is None
    assert reports.stage2_text(None) is None
    s = reports.extract_sections(MIMIC_REPORTS["wet_read_combined"])
    assert reports.stage1_text(s["findings"], s["impression"]) == s["impression"]


def _rec(i, subject, study, view, when, impression="Normal."):
    return {
        "id": f"d{i}",
        "subject_id": subject,
        "study_id": study,
        "view": view,
        "study_datetime": when,
        "findings": "",
        "impression": impression,
    }


def test_select_stage2_rules():
    records = [
        _rec(0, "s1", "100", "LATERAL", "21800101T000000"),  # earliest, but lateral
        _rec(1, "s1", "101", "PA", "21800102T080000"),
        _rec(2, "s1", "102", "PA", "21800103T080000"),  # later study
        _rec(3, "s1", "101", "AP", "21800102T080000"),  # same study as 1: id d1 < d3 wins
        _rec(4, "s2", "200", "AP", "21900101T000000", impression=""),  # no impression
        _rec(5, "s2", "201", "AP AXIAL", "21900101T000000"),  # not PA/AP
        _rec(6, "s2", "202", "ap", "21900105T000000"),
        _rec(7, "s3", "301", "PA", ""),  # unknown time sorts last
        _rec(8, "s3", "302", "PA", "21700101T000000"),
        _rec(9, "s4", "402", "PA", "21700101T000000"),  # same time: smaller study_id wins
        _rec(10, "s4", "401", "PA", "21700101T000000"),
        _rec(11, "s5", "501", "LL", "21700101T000000"),  # no frontal image: nothing
    ]
    assert reports.select_stage2(records) == [1, 6, 8, 10]
    as_bytes = [{k: v.encode() for k, v in r.items()} for r in records]
    assert reports.select_stage2(as_bytes) == [1, 6, 8, 10]
    assert reports.select_stage2([]) == []
