"""The rule-based CheXpert-style labeler, sentence by sentence, and the paper's 6-class merge.

Expected values are written by hand: 1 positive, 0 negated, -1 uncertain, -2 not mentioned
(every observation not listed must be -2). "NF" is No Finding.
"""

import numpy as np
import pytest

from llmcxr_jax.data import labeler
from llmcxr_jax.data.labeler import label_report, label_reports
from llmcxr_jax.data.labels import (
    NEGATIVE,
    NOT_MENTIONED,
    OBSERVATIONS,
    PAPER_CLASSES,
    POSITIVE,
    UNCERTAIN,
    paper_labels,
)

K = {
    "NF": "No Finding",
    "EC": "Enlarged Cardiomediastinum",
    "CM": "Cardiomegaly",
    "LO": "Lung Opacity",
    "LL": "Lung Lesion",
    "ED": "Edema",
    "CO": "Consolidation",
    "PN": "Pneumonia",
    "AT": "Atelectasis",
    "PX": "Pneumothorax",
    "EF": "Pleural Effusion",
    "PO": "Pleural Other",
    "FX": "Fracture",
    "SD": "Support Devices",
}

CASES = [
    # plain positives, with synonyms
    ("There is a small left pleural effusion.", dict(EF=1)),
    ("Blunting of the right costophrenic angle.", dict(EF=1)),
    ("Moderate cardiomegaly.", dict(CM=1)),
    ("Enlarged cardiac silhouette.", dict(CM=1)),
    ("The heart size is enlarged.", dict(CM=1)),
    ("Widened mediastinum.", dict(EC=1)),
    ("Mild pulmonary vascular congestion.", dict(ED=1)),
    ("Moderate interstitial edema.", dict(ED=1)),
    ("Findings consistent with congestive heart failure.", dict(ED=1)),
    ("Right upper lobe consolidation consistent with pneumonia.", dict(CO=1, PN=1)),
    ("A 1.5 cm nodule in the right upper lobe.", dict(LL=1)),
    ("Large left lower lobe mass.", dict(LL=1)),
    ("Hydropneumothorax on the right.", dict(PX=1)),
    ("Small right ptx.", dict(PX=1)),
    ("Pleural thickening at the left apex.", dict(PO=1)),
    ("Healed left rib fractures.", dict(FX=1)),
    ("Bibasilar airspace disease.", dict(LO=1, CO=1)),
    ("Nodule or mass in the left upper lobe.", dict(LL=1)),  # same observation: no alternative
    # pre-negation, coordinated negation, post-negation
    ("No pleural effusion or pneumothorax.", dict(NF=1, EF=0, PX=0)),
    ("No pleural effusion, pneumothorax, or focal consolidation.", dict(NF=1, EF=0, PX=0, CO=0)),
    (
        "There is no focal consolidation, pleural effusion or pneumothorax.",
        dict(NF=1, EF=0, PX=0, CO=0),
    ),
    ("No evidence of pneumothorax.", dict(NF=1, PX=0)),
    ("Lungs are clear without consolidation or edema.", dict(NF=1, LO=0, CO=0, ED=0)),
    ("Negative for pneumonia.", dict(NF=1, PN=0)),
    ("Interval resolution of the right lower lobe consolidation.", dict(NF=1, CO=0)),
    ("No new consolidation.", dict(NF=1, CO=0)),
    ("No suspicious pulmonary nodules.", dict(NF=1, LL=0)),
    ("No focal opacity to suggest pneumonia.", dict(NF=1, LO=0, PN=0)),
    ("Pneumothorax is not seen.", dict(NF=1, PX=0)),
    ("Pleural effusion and pneumothorax are not seen.", dict(NF=1, EF=0, PX=0)),
    ("The left pleural effusion has resolved.", dict(NF=1, EF=0)),
    ("The small left pneumothorax is no longer seen.", dict(NF=1, PX=0)),
    ("The endotracheal tube has been removed.", dict(NF=1, SD=0)),
    ("No displaced rib fracture.", dict(NF=1, FX=0)),
    # normal-structure statements
    ("The lungs are clear.", dict(NF=1, LO=0, CO=0)),
    ("Heart size is normal.", dict(NF=1, CM=0)),
    ("The heart is not enlarged.", dict(NF=1, CM=0)),
    ("Normal cardiomediastinal silhouette.", dict(NF=1, CM=0, EC=0)),
    ("Heart size and mediastinal contours are normal.", dict(NF=1, CM=0, EC=0)),
    ("The costophrenic angles are sharp.", dict(NF=1, EF=0)),
    ("No acute cardiopulmonary process.", dict(NF=1)),
    # uncertainty: pre-cues, post-cues, alternatives, "likely"
    ("Possible small left pleural effusion.", dict(EF=-1)),
    ("The heart may be mildly enlarged.", dict(CM=-1)),
    ("The heart size is borderline enlarged.", dict(CM=-1)),
    ("Findings concerning for pneumonia.", dict(PN=-1)),
    ("A small right apical pneumothorax cannot be excluded.", dict(PX=-1)),
    ("Pneumonia cannot be ruled out.", dict(PN=-1)),
    ("Small left pleural effusion is not excluded.", dict(EF=-1)),
    ("Right lower lobe opacity, likely atelectasis.", dict(LO=1, AT=-1)),
    ("Atelectasis versus pneumonia.", dict(AT=-1, PN=-1)),
    ("Left lower lobe atelectasis and/or consolidation.", dict(AT=-1, CO=-1)),
    (
        "Patchy opacity at the right base may represent atelectasis or early pneumonia.",
        dict(LO=1, AT=-1, PN=-1),
    ),
    ("Left basilar opacity, atelectasis versus pneumonia.", dict(LO=1, AT=-1, PN=-1)),
    ("Faint right upper lobe opacity, which could reflect consolidation.", dict(LO=1, CO=-1)),
    # clause boundaries and scope ends
    ("No pneumothorax, but there is a small left effusion.", dict(PX=0, EF=1)),
    ("Possible pneumonia, no effusion.", dict(PN=-1, EF=0)),
    ("Cardiomegaly with no pleural effusion.", dict(CM=1, EF=0)),
    ("There is no evidence of pneumothorax and the heart is enlarged.", dict(PX=0, CM=1)),
    ("No acute process except for a small right pleural effusion.", dict(EF=1)),
    ("Right pleural effusion, which may be loculated.", dict(EF=1)),
    # double mentions: positive > uncertain > negative
    ("No right pleural effusion. Small left pleural effusion.", dict(EF=1)),
    ("Possible pneumonia. Right lower lobe pneumonia.", dict(PN=1)),
    ("Possible small effusion. No pneumothorax. No effusion on the right.", dict(EF=-1, PX=0)),
    # pseudo-negation and non-pleural effusion
    ("No change in the small left pleural effusion.", dict(EF=1)),
    ("Small pericardial effusion.", dict(NF=1)),
    # support devices do not break No Finding
    ("Left chest tube in place. No pneumothorax.", dict(NF=1, PX=0, SD=1)),
    ("Right internal jugular central venous catheter tip in the SVC.", dict(NF=1, SD=1)),
    ("Pacemaker in place. Lungs are clear.", dict(NF=1, SD=1, LO=0, CO=0)),
    # sections: INDICATION / EXAMINATION are not findings
    (
        "INDICATION: Evaluate for pneumonia.\n\nFINDINGS: Lungs are clear.\n\n"
        "IMPRESSION: No acute cardiopulmonary process.",
        dict(NF=1, LO=0, CO=0),
    ),
    (
        "EXAMINATION: CHEST (PA AND LAT)\nINDICATION: ___ with CHF, eval for edema\n"
        "COMPARISON: None.\nFINDINGS: Mild cardiomegaly. IMPRESSION: Mild cardiomegaly.",
        dict(CM=1),
    ),
    ("FINDINGS:\n1. Small left effusion.\n2. No pneumothorax.", dict(EF=1, PX=0)),
]


def expected(spec: dict[str, int]) -> np.ndarray:
    out = np.full(len(OBSERVATIONS), NOT_MENTIONED, np.int8)
    for key, value in spec.items():
        out[OBSERVATIONS.index(K[key])] = value
    return out


@pytest.mark.parametrize("text,spec", CASES, ids=[c[0][:50] for c in CASES])
def test_sentence(text, spec):
    got = label_report(text)
    assert got.dtype == np.int8 and got.shape == (14,)
    want = expected(spec)
    diff = {OBSERVATIONS[i]: (int(got[i]), int(want[i])) for i in np.flatnonzero(got != want)}
    assert not diff, f"{text!r}: (got, expected) {diff}"


def test_enough_cases():
    assert len(CASES) >= 40


def test_empty_text_is_all_absent():
    for text in ("", "   \n", "INDICATION: cough."):
        assert (label_report(text) == NOT_MENTIONED).all()


def test_value_constants_and_order():
    assert (POSITIVE, NEGATIVE, UNCERTAIN, NOT_MENTIONED) == (1, 0, -1, -2)
    assert OBSERVATIONS[0] == "No Finding" and OBSERVATIONS[-1] == "Support Devices"
    assert len(OBSERVATIONS) == 14
    assert PAPER_CLASSES == (
        "No Finding",
        "Pneumothorax",
        "Edema",
        "Pleural Effusion",
        "Consolidation/Pneumonia",
        "Lung Lesion",
    )


def test_label_reports_batch():
    texts = [c[0] for c in CASES[:5]]
    out = label_reports(texts)
    assert out.shape == (5, 14) and out.dtype == np.int8
    np.testing.assert_array_equal(out, np.stack([label_report(t) for t in texts]))
    assert label_reports([]).shape == (0, 14)


def test_aggregate_rule():
    agg = labeler.aggregate(
        [("Pleural Effusion", 0), ("Pleural Effusion", -1), ("Edema", 0), ("Edema", 1)]
    )
    assert agg[OBSERVATIONS.index("Pleural Effusion")] == -1
    assert agg[OBSERVATIONS.index("Edema")] == 1
    assert agg[0] == NOT_MENTIONED
    assert labeler.aggregate([("Support Devices", 1)])[0] == POSITIVE


def test_paper_labels_merge():
    values = (POSITIVE, UNCERTAIN, NEGATIVE, NOT_MENTIONED)
    rank = {POSITIVE: 3, UNCERTAIN: 2, NEGATIVE: 1, NOT_MENTIONED: 0}
    rows = []
    for c in values:
        for p in values:
            row = np.full(14, NOT_MENTIONED, np.int8)
            row[OBSERVATIONS.index("Consolidation")] = c
            row[OBSERVATIONS.index("Pneumonia")] = p
            row[OBSERVATIONS.index("Edema")] = c
            row[OBSERVATIONS.index("No Finding")] = p
            rows.append((row, max(c, p, key=rank.get), c, p))
    batch = np.stack([r[0] for r in rows]).reshape(4, 4, 14)
    out = paper_labels(batch)
    assert out.shape == (4, 4, 6) and out.dtype == np.int8
    for k, (_, merged, c, p) in enumerate(rows):
        got = out.reshape(16, 6)[k]
        assert got[PAPER_CLASSES.index("Consolidation/Pneumonia")] == merged, (c, p)
        assert got[PAPER_CLASSES.index("Edema")] == c
        assert got[PAPER_CLASSES.index("No Finding")] == p
    one = paper_labels(label_report("Small left pleural effusion. Possible pneumonia."))
    np.testing.assert_array_equal(
        one, [NOT_MENTIONED, NOT_MENTIONED, NOT_MENTIONED, POSITIVE, UNCERTAIN, NOT_MENTIONED]
    )
    with pytest.raises(ValueError):
        paper_labels(np.zeros((3, 13), np.int8))
