"""The report of a phantom case, and the CheXpert labels it asserts.

`write_report`: FINDINGS and IMPRESSION from varied sentence templates, with negations of what
is absent and, for mild findings (probability `hedge`), hedged wording. Every template is tagged
with the CheXpert labels it asserts, and a report's labels are the aggregate of its tags
(CheXpert's rule: positive > uncertain > negative > not mentioned; No Finding positive when
nothing but Support Devices is positive or uncertain), i.e. what the report SAYS, in the
conventions of `labeler.py` (which recovers them exactly; tested). A hedged finding is on the
film but uncertain in the labels. `full_report`: some reports start with EXAMINATION,
INDICATION (whose words are not findings) or COMPARISON sections.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from llmcxr_jax.data import labeler
from llmcxr_jax.data.phantoms.cases import Case, Finding, choice

_OBS = {
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
Tags = dict[str, int]
Template = tuple[str, Tags]


def _t(text: str, **tags: int) -> Template:
    return text, tags


# normal structures and negations
_HEART_NORMAL = (
    _t("The heart size is normal.", CM=0),
    _t("Heart size is within normal limits.", CM=0),
    _t("Normal heart size.", CM=0),
    _t("The cardiac silhouette is normal in size.", CM=0),
    _t("The cardiomediastinal silhouette is within normal limits.", CM=0, EC=0),
    _t("Normal cardiomediastinal silhouette.", CM=0, EC=0),
    _t("Heart size and mediastinal contours are normal.", CM=0, EC=0),
    _t("The heart is not enlarged.", CM=0),
    _t("Cardiac and mediastinal contours are unremarkable.", CM=0, EC=0),
    _t("No cardiomegaly.", CM=0),
)
_MEDIASTINUM_NORMAL = (
    _t("The mediastinal contours are unremarkable.", EC=0),
    _t("Mediastinal contours are within normal limits.", EC=0),
    _t("Hilar and mediastinal contours are normal.", EC=0),
)
_LUNGS_CLEAR = (
    _t("The lungs are clear.", LO=0, CO=0),
    _t("Lungs are clear bilaterally.", LO=0, CO=0),
    _t("The lungs are well expanded and clear.", LO=0, CO=0),
    _t("There is no focal consolidation.", CO=0),
    _t("No focal consolidation.", CO=0),
    _t("No focal airspace consolidation.", CO=0),
    _t("No focal opacity to suggest pneumonia.", LO=0, PN=0),
    _t("Lungs are clear without consolidation or edema.", LO=0, CO=0, ED=0),
    _t("The lungs are clear. No pulmonary edema.", LO=0, CO=0, ED=0),
    _t("Clear lungs.", LO=0, CO=0),
    _t("The lungs are clear. No suspicious pulmonary nodules.", LO=0, CO=0, LL=0),
    _t("Lungs are clear, without focal consolidation, nodule or mass.", LO=0, CO=0, LL=0),
)
_NO_CONSOLIDATION = (
    _t("No focal consolidation.", CO=0),
    _t("There is no focal consolidation.", CO=0),
    _t("No evidence of pneumonia.", PN=0),
)
_NO_EDEMA = (
    _t("No pulmonary edema.", ED=0),
    _t("There is no pulmonary vascular congestion.", ED=0),
    _t("No evidence of pulmonary edema.", ED=0),
)
_NO_NODULE = (
    _t("No suspicious pulmonary nodules.", LL=0),
    _t("No pulmonary nodule or mass.", LL=0),
)
_NO_PLEURAL = (
    _t("No pleural effusion or pneumothorax.", EF=0, PX=0),
    _t("There is no pleural effusion or pneumothorax.", EF=0, PX=0),
    _t("No effusion or pneumothorax is seen.", EF=0, PX=0),
    _t("There is no pneumothorax or pleural effusion.", EF=0, PX=0),
    _t("The costophrenic angles are sharp. No pneumothorax.", EF=0, PX=0),
    _t("Pleural effusion and pneumothorax are not seen.", EF=0, PX=0),
    _t("No evidence of pleural effusion or pneumothorax.", EF=0, PX=0),
)
_NO_PLEURAL_OR_CONSOLIDATION = (
    _t("No pleural effusion, pneumothorax, or focal consolidation.", EF=0, PX=0, CO=0),
    _t("There is no focal consolidation, pleural effusion or pneumothorax.", EF=0, PX=0, CO=0),
)
_NO_EFFUSION = (
    _t("No pleural effusion.", EF=0),
    _t("There is no pleural effusion.", EF=0),
    _t("The costophrenic angles are sharp.", EF=0),
    _t("No evidence of pleural effusion.", EF=0),
)
_NO_PNEUMOTHORAX = (
    _t("No pneumothorax.", PX=0),
    _t("There is no pneumothorax.", PX=0),
    _t("No evidence of pneumothorax.", PX=0),
    _t("Pneumothorax is not seen.", PX=0),
)
_BONES = (
    _t("No acute osseous abnormality."),
    _t("No displaced rib fractures.", FX=0),
    _t("The visualized osseous structures are unremarkable."),
    _t("Mild degenerative changes of the thoracic spine."),
    _t("No acute fracture is identified.", FX=0),
)
_NORMAL_IMPRESSION = (
    _t("No acute cardiopulmonary process."),
    _t("No acute cardiopulmonary abnormality."),
    _t("No acute intrathoracic process."),
    _t("Normal chest radiograph."),
    _t("No radiographic evidence of acute cardiopulmonary disease."),
)

_SEV_ADVERB = {"mild": "mildly", "moderate": "moderately", "severe": "markedly"}
_CARDIOMEGALY = (
    _t("The heart is {adv} enlarged.", CM=1),
    _t("{Sev} cardiomegaly.", CM=1),
    _t("{Adv} enlarged cardiac silhouette.", CM=1),
    _t("Heart size is {adv} enlarged.", CM=1),
    _t("There is {sev} enlargement of the cardiac silhouette.", CM=1),
    _t("The cardiac silhouette is {adv} enlarged.", CM=1),
)
_CARDIOMEGALY_HEDGED = (
    _t("The heart size is borderline enlarged.", CM=-1),
    _t("Possible mild cardiomegaly.", CM=-1),
    _t("The heart may be mildly enlarged.", CM=-1),
)
_CARDIOMEGALY_IMPRESSION = (
    _t("Cardiomegaly.", CM=1),
    _t("{Sev} cardiomegaly.", CM=1),
    _t("Enlarged heart.", CM=1),
    _t("{Sev} enlargement of the cardiac silhouette.", CM=1),
)
_CARDIOMEGALY_IMPRESSION_HEDGED = (
    _t("Borderline cardiomegaly.", CM=-1),
    _t("Possible mild cardiomegaly.", CM=-1),
)

_EFFUSION = (
    _t("There is a {sev} {side} pleural effusion.", EF=1),
    _t("{Sev} {side} pleural effusion.", EF=1),
    _t("{Side} pleural effusion, {sev} in size.", EF=1),
    _t("A {sev} {side} pleural effusion is present.", EF=1),
)
_EFFUSION_SMALL = (
    _t(
        "Blunting of the {side} costophrenic angle, consistent with a small pleural effusion.", EF=1
    ),
)
_EFFUSION_BIG = (
    _t("{Sev} {side} pleural effusion with adjacent compressive atelectasis.", EF=1, AT=1),
    _t("{Sev} {side} pleural effusion layering along the lateral chest wall.", EF=1),
)
_EFFUSIONS = (
    _t("There are {sev} bilateral pleural effusions.", EF=1),
    _t("{Sev} bilateral pleural effusions.", EF=1),
    _t("Bilateral pleural effusions, {sev} in size.", EF=1),
    _t("{Sev} pleural effusions are present bilaterally.", EF=1),
)
_EFFUSIONS_SMALL = (
    _t("Blunting of both costophrenic angles, consistent with small bilateral effusions.", EF=1),
)
_EFFUSION_HEDGED = (
    _t("Possible small {side} pleural effusion.", EF=-1),
    _t("A small {side} pleural effusion cannot be excluded.", EF=-1),
    _t("Questionable trace {side} pleural effusion.", EF=-1),
)
_EFFUSIONS_HEDGED = (
    _t("Possible small bilateral pleural effusions.", EF=-1),
    _t("Small bilateral pleural effusions cannot be excluded.", EF=-1),
)
_EFFUSION_BUT_NO_PTX = (
    _t("No pneumothorax, but there is a {sev} {side} pleural effusion.", PX=0, EF=1),
)
_EFFUSION_IMPRESSION = (
    _t("{Sev} {side} pleural effusion.", EF=1),
    _t("{Side} pleural effusion.", EF=1),
)
_EFFUSIONS_IMPRESSION = (
    _t("{Sev} bilateral pleural effusions.", EF=1),
    _t("Bilateral pleural effusions.", EF=1),
)
_EFFUSION_IMPRESSION_HEDGED = (
    _t("Possible small {side} pleural effusion.", EF=-1),
    _t("Small {side} pleural effusion is not excluded.", EF=-1),
)
_EFFUSIONS_IMPRESSION_HEDGED = (_t("Possible small bilateral pleural effusions.", EF=-1),)

_PNEUMOTHORAX = {
    "small": (
        _t("There is a small {side} apical pneumothorax.", PX=1),
        _t("Small {side} apical pneumothorax.", PX=1),
        _t("A small {side} pneumothorax is seen at the apex.", PX=1),
        _t("Small {side} apical pneumothorax with the visceral pleural line visible.", PX=1),
    ),
    "moderate": (
        _t("Moderate {side} pneumothorax.", PX=1),
        _t("There is a moderate-sized {side} pneumothorax.", PX=1),
        _t("A moderate {side} pneumothorax is present with a visible visceral pleural line.", PX=1),
    ),
    "large": (
        _t("Large {side} pneumothorax with partial collapse of the {side} lung.", PX=1),
        _t("There is a large {side} pneumothorax.", PX=1),
        _t(
            "Large {side} pneumothorax, the lung edge is displaced well away from the chest wall.",
            PX=1,
        ),
    ),
}
_PNEUMOTHORAX_HEDGED = (
    _t("Possible tiny {side} apical pneumothorax.", PX=-1),
    _t("A small {side} apical pneumothorax cannot be excluded.", PX=-1),
    _t("Questionable small {side} apical pneumothorax.", PX=-1),
)
_PNEUMOTHORAX_IMPRESSION = (
    _t("{Sev} {side} pneumothorax.", PX=1),
    _t("{Side} pneumothorax, {sev}.", PX=1),
    _t("{Sev} {side} pneumothorax. Findings were discussed with the referring clinician.", PX=1),
)
_PNEUMOTHORAX_IMPRESSION_HEDGED = (
    _t("Possible small {side} apical pneumothorax; recommend repeat radiograph.", PX=-1),
    _t("Small {side} pneumothorax cannot be excluded.", PX=-1),
)

_CONSOLIDATION = {
    "mild": (
        _t("Patchy consolidation in the {lobe}.", CO=1),
        _t("Mild {lobe} consolidation.", CO=1),
        _t("Subtle patchy airspace opacity in the {lobe}.", LO=1),
    ),
    "moderate": (
        _t("There is consolidation in the {lobe}.", CO=1),
        _t("{Lobe} consolidation.", CO=1),
        _t("Focal airspace consolidation in the {lobe}.", CO=1),
        _t("Consolidation is seen in the {lobe}.", CO=1),
        _t("{Lobe} opacity consistent with pneumonia.", LO=1, PN=1),
    ),
    "severe": (
        _t("Dense consolidation of the {lobe}.", CO=1),
        _t("Extensive {lobe} consolidation.", CO=1),
        _t("Dense {lobe} airspace opacity.", LO=1),
    ),
}
_AIR_BRONCHOGRAMS = (
    _t("Air bronchograms are present within the consolidation.", CO=1),
    _t("There are air bronchograms within the area of consolidation.", CO=1),
)
_CONSOLIDATION_HEDGED_LOWER = (
    _t(
        "Patchy opacity at the {side} base may represent atelectasis or early pneumonia.",
        LO=1,
        AT=-1,
        PN=-1,
    ),
)
_CONSOLIDATION_HEDGED = (
    _t("Subtle {side} {zone} zone opacity, possibly early pneumonia.", LO=1, PN=-1),
    _t("Possible {lobe} consolidation.", CO=-1),
    _t("Faint {lobe} opacity, which could reflect consolidation.", LO=1, CO=-1),
)
_CONSOLIDATION_IMPRESSION = (
    _t("{Lobe} pneumonia.", PN=1),
    _t("{Lobe} consolidation, consistent with pneumonia.", CO=1, PN=1),
    _t("{Sev} {lobe} consolidation.", CO=1),
    _t("Findings consistent with {lobe} pneumonia.", PN=1),
    _t("{Lobe} consolidation concerning for pneumonia.", CO=1, PN=-1),
)
_CONSOLIDATION_IMPRESSION_HEDGED_LOWER = (
    _t("{Side} basilar opacity, atelectasis versus pneumonia.", LO=1, AT=-1, PN=-1),
)
_CONSOLIDATION_IMPRESSION_HEDGED = (
    _t("Possible early {lobe} pneumonia.", PN=-1),
    _t("Findings may represent early {lobe} pneumonia.", PN=-1),
)

_EDEMA = {
    "mild": (
        _t("Mild pulmonary vascular congestion.", ED=1),
        _t("Mild interstitial edema.", ED=1),
        _t("There is mild pulmonary edema.", ED=1),
        _t("Mild vascular congestion and interstitial edema.", ED=1),
    ),
    "moderate": (
        _t("Moderate pulmonary edema.", ED=1),
        _t(
            "Perihilar haziness and increased interstitial markings consistent with moderate "
            "pulmonary edema.",
            LO=1,
            ED=1,
        ),
        _t("There is moderate interstitial pulmonary edema.", ED=1),
        _t("Bilateral perihilar opacities consistent with moderate pulmonary edema.", LO=1, ED=1),
    ),
    "severe": (
        _t("Severe pulmonary edema.", ED=1),
        _t(
            "Diffuse bilateral perihilar airspace opacities, consistent with severe pulmonary "
            "edema.",
            LO=1,
            ED=1,
        ),
        _t("Marked alveolar and interstitial edema.", ED=1),
    ),
}
_EDEMA_HEDGED = (
    _t("Possible mild interstitial edema.", ED=-1),
    _t("Hazy perihilar opacities may reflect mild pulmonary edema.", LO=1, ED=-1),
)
_EDEMA_IMPRESSION = (
    _t("{Sev} pulmonary edema.", ED=1),
    _t("{Sev} congestive heart failure.", ED=1),
    _t("Findings consistent with {sev} pulmonary edema.", ED=1),
)
_EDEMA_IMPRESSION_HEDGED = (
    _t("Possible mild pulmonary edema.", ED=-1),
    _t("Mild edema is not excluded.", ED=-1),
)
_CHF_IMPRESSION = (
    _t(
        "Cardiomegaly with {sev} pulmonary edema and {effusion} pleural effusions, consistent "
        "with congestive heart failure.",
        CM=1,
        ED=1,
        EF=1,
    ),
)

_NODULE = (
    _t("There is a {mm} mm nodule in the {side} {zone} lung.", LL=1),
    _t("A {mm} mm {side} {zone} lobe pulmonary nodule.", LL=1),
    _t("Rounded nodular opacity in the {side} {zone} lung zone, measuring {mm} mm.", LL=1, LO=1),
    _t("{Side} {zone} lung nodule measuring approximately {mm} mm.", LL=1),
)
_MASS = (
    _t("There is a {cm} cm mass in the {side} {zone} lobe.", LL=1),
    _t("Large {side} {zone} lung mass measuring {cm} cm.", LL=1),
    _t("A {cm} cm rounded mass projects over the {side} {zone} lung.", LL=1),
    _t("{Side} {zone} lobe mass, concerning for malignancy.", LL=1),
)
_NODULE_HEDGED = (
    _t("Questionable {side} {zone} lung nodule.", LL=-1),
    _t("Possible small nodule in the {side} {zone} lung.", LL=-1),
)
_NODULE_IMPRESSION = (
    _t("{Side} {zone} lung nodule; recommend chest CT for further characterization.", LL=1),
    _t("{mm} mm {side} {zone} pulmonary nodule.", LL=1),
)
_MASS_IMPRESSION = (
    _t("{Side} {zone} lung mass, concerning for malignancy.", LL=1),
    _t("{cm} cm {side} {zone} lobe mass; recommend CT.", LL=1),
)
_NODULE_IMPRESSION_HEDGED = (_t("Possible {side} {zone} lung nodule; consider chest CT.", LL=-1),)

_EXAMINATION = {"PA": "EXAMINATION: CHEST (PA AND LAT)", "AP": "EXAMINATION: CHEST (PORTABLE AP)"}
_INDICATIONS = (
    "cough and fever, evaluate for pneumonia",
    "shortness of breath",
    "chest pain",
    "history of CHF, evaluate for pulmonary edema",
    "fall, rule out rib fracture",
    "follow-up of pleural effusion",
)


class _Writer:
    """Collects sentences and their tags."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.sentences: list[str] = []
        self.tags: list[tuple[str, int]] = []

    def add(self, options: Sequence[Template], **fmt: Any) -> None:
        text, tags = options[int(self.rng.integers(len(options)))]
        self.sentences.append(_fill(text, fmt))
        self.tags.extend((_OBS[k], v) for k, v in tags.items())

    def text(self) -> str:
        return " ".join(self.sentences)


def _fill(text: str, fmt: Mapping[str, Any]) -> str:
    caps = {k[:1].upper() + k[1:]: str(v)[:1].upper() + str(v)[1:] for k, v in fmt.items()}
    return text.format(**fmt, **caps)


def _fmt(f: Finding, rng: np.random.Generator) -> dict[str, Any]:
    fmt: dict[str, Any] = {"sev": f.severity, "side": f.side or "", "zone": f.zone or ""}
    fmt["adv"] = _SEV_ADVERB.get(f.severity, "")
    if f.zone:
        fmt["lobe"] = f"{f.side} {f.zone} lobe"
    fmt["mm"] = int(rng.integers(6, 15))
    fmt["cm"] = f"{rng.uniform(3.0, 6.5):.1f}"
    return fmt


def _hedgeable(f: Finding) -> bool:
    return f.severity in ("mild", "small")


def write_report(
    case: Case, rng: np.random.Generator, *, hedge: float = 0.3
) -> tuple[str, str, np.ndarray]:
    """(FINDINGS text, IMPRESSION text, labels int8[14]) for `case`.

    The labels are what the text says (each template's tags, aggregated as CheXpert does).
    """
    hedged = {f.name for f in case.findings if _hedgeable(f) and rng.random() < hedge}
    fmts = {f.name: _fmt(f, rng) for f in case.findings}
    has = {f.name: f for f in case.findings}
    fw, iw = _Writer(rng), _Writer(rng)

    # heart and mediastinum
    cm = has.get("cardiomegaly")
    if cm:
        fw.add(_CARDIOMEGALY_HEDGED if "cardiomegaly" in hedged else _CARDIOMEGALY, **fmts[cm.name])
        if rng.random() < 0.3:
            fw.add(_MEDIASTINUM_NORMAL)
    elif rng.random() < 0.9:
        fw.add(_HEART_NORMAL)

    # lungs
    lung_findings = [has[n] for n in ("consolidation", "edema", "lung_lesion") if n in has]
    for f in lung_findings:
        fmt, h = fmts[f.name], f.name in hedged
        if f.name == "consolidation":
            if h:
                lower = _CONSOLIDATION_HEDGED_LOWER if f.zone == "lower" else ()
                fw.add(_CONSOLIDATION_HEDGED + lower, **fmt)
            else:
                fw.add(_CONSOLIDATION[f.severity], **fmt)
                if case.air_bronchograms:
                    fw.add(_AIR_BRONCHOGRAMS)
        elif f.name == "edema":
            fw.add(_EDEMA_HEDGED if h else _EDEMA[f.severity], **fmt)
        elif f.severity == "large":
            fw.add(_MASS, **fmt)
        else:
            fw.add(_NODULE_HEDGED if h else _NODULE, **fmt)
    eff, ptx = has.get("pleural_effusion"), has.get("pneumothorax")
    pleural_done = False
    if not lung_findings:
        if not eff and not ptx and rng.random() < 0.2:
            fw.add(_NO_PLEURAL_OR_CONSOLIDATION)
            pleural_done = True
        elif rng.random() < 0.92:
            fw.add(_LUNGS_CLEAR)
    else:
        if "consolidation" not in has and rng.random() < 0.4:
            fw.add(_NO_CONSOLIDATION)
        if "edema" not in has and rng.random() < 0.3:
            fw.add(_NO_EDEMA)
        if "lung_lesion" not in has and rng.random() < 0.15:
            fw.add(_NO_NODULE)

    # pleura
    if not pleural_done:
        if eff:
            fmt, h = fmts[eff.name], eff.name in hedged
            bilateral = eff.side == "bilateral"
            if h:
                fw.add(_EFFUSIONS_HEDGED if bilateral else _EFFUSION_HEDGED, **fmt)
            elif not ptx and not bilateral and rng.random() < 0.2:
                fw.add(_EFFUSION_BUT_NO_PTX, **fmt)
                pleural_done = True
            else:
                options = _EFFUSIONS if bilateral else _EFFUSION
                if eff.severity == "small":
                    options += _EFFUSIONS_SMALL if bilateral else _EFFUSION_SMALL
                elif not bilateral:
                    options += _EFFUSION_BIG
                fw.add(options, **fmt)
        if ptx:
            fmt, h = fmts[ptx.name], ptx.name in hedged
            fw.add(_PNEUMOTHORAX_HEDGED if h else _PNEUMOTHORAX[ptx.severity], **fmt)
        if not pleural_done:
            if not eff and not ptx:
                if rng.random() < 0.95:
                    fw.add(_NO_PLEURAL)
            elif not eff:
                fw.add(_NO_EFFUSION)
            elif not ptx and rng.random() < 0.8:
                fw.add(_NO_PNEUMOTHORAX)
    if rng.random() < 0.35:
        fw.add(_BONES)

    # impression
    if not case.findings:
        iw.add(_NORMAL_IMPRESSION)
    else:
        chf = (
            cm
            and eff
            and eff.side == "bilateral"
            and "edema" in has
            and not hedged & {"cardiomegaly", "edema", "pleural_effusion"}
            and rng.random() < 0.5
        )
        if chf:
            iw.add(_CHF_IMPRESSION, sev=has["edema"].severity, effusion=eff.severity)
        for f in case.findings:
            if chf and f.name in ("cardiomegaly", "edema", "pleural_effusion"):
                continue
            iw.add(_impression_options(f, f.name in hedged), **fmts[f.name])
        if not ptx and rng.random() < 0.2:
            iw.add(_NO_PNEUMOTHORAX)
    labels = labeler.aggregate(fw.tags + iw.tags)
    return fw.text(), iw.text(), labels


def _impression_options(f: Finding, hedged: bool) -> tuple[Template, ...]:
    bilateral = f.side == "bilateral"
    table: dict[str, tuple[tuple[Template, ...], tuple[Template, ...]]] = {
        "cardiomegaly": (_CARDIOMEGALY_IMPRESSION, _CARDIOMEGALY_IMPRESSION_HEDGED),
        "pleural_effusion": (
            _EFFUSIONS_IMPRESSION if bilateral else _EFFUSION_IMPRESSION,
            _EFFUSIONS_IMPRESSION_HEDGED if bilateral else _EFFUSION_IMPRESSION_HEDGED,
        ),
        "pneumothorax": (_PNEUMOTHORAX_IMPRESSION, _PNEUMOTHORAX_IMPRESSION_HEDGED),
        "consolidation": (
            _CONSOLIDATION_IMPRESSION,
            _CONSOLIDATION_IMPRESSION_HEDGED
            + (_CONSOLIDATION_IMPRESSION_HEDGED_LOWER if f.zone == "lower" else ()),
        ),
        "edema": (_EDEMA_IMPRESSION, _EDEMA_IMPRESSION_HEDGED),
        "lung_lesion": (
            _MASS_IMPRESSION if f.severity == "large" else _NODULE_IMPRESSION,
            _NODULE_IMPRESSION_HEDGED,
        ),
    }
    return table[f.name][1 if hedged else 0]


def full_report(findings: str, impression: str, rng: np.random.Generator, view: str = "PA") -> str:
    """The whole report: optional EXAMINATION/INDICATION/COMPARISON, then the two sections."""
    parts = []
    if rng.random() < 0.3:
        parts.append(_EXAMINATION[view])
    if rng.random() < 0.25:
        who = "man" if rng.random() < 0.5 else "woman"
        parts.append(f"INDICATION: ___-year-old {who} with {choice(rng, _INDICATIONS)}.")
    if rng.random() < 0.2:
        parts.append("COMPARISON: None." if rng.random() < 0.5 else "COMPARISON: ___.")
    parts.append(f"FINDINGS: {findings}")
    parts.append(f"IMPRESSION: {impression}")
    return "\n\n".join(parts)
