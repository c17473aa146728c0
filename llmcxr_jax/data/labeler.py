"""A rule-based CheXpert-style labeler: free-text chest X-ray report -> 14 observation labels.

Why this module exists: LLM-CXR is evaluated by labelling generated and reference reports with
a CheXpert-style labeler (AUROC/F1 over six classes), and Open-i reports need labels too. The
CheXpert labeler itself needs NegBio, a dependency parser and Java; this is a small,
dependency-free reimplementation of the same idea (mention extraction, then negation and
uncertainty classification of each mention, then aggregation), good enough for template-like
text (our phantom reports, model outputs) and tested sentence by sentence.

Pipeline (`label_report`):

1. Sections that do not describe the image are dropped: INDICATION, HISTORY, REASON FOR EXAM,
   COMPARISON, TECHNIQUE, EXAMINATION, PROCEDURE (a header is a known name followed by `:` at
   the start of a line, after a sentence end, or in capitals anywhere). The rest is lower-cased
   and split into sentences (`.` except in numbers like "1.5", `!`, `?`, `;`, `:`, new lines)
   and clauses ("but", "however", "although", "though", "whereas", "except (for)", "aside
   from", "apart from").
2. Mentions: regular expressions per observation (`_MENTIONS`), e.g. "effusion", "pleural
   fluid", "blunting of the costophrenic angle" for Pleural Effusion. Fixed-value statements
   (`_NORMAL_STATEMENTS`) give negatives directly: "heart size is normal", "normal cardiac
   silhouette" -> Cardiomegaly 0; "normal cardiomediastinal silhouette" -> Cardiomegaly 0 and
   Enlarged Cardiomediastinum 0; "mediastinal contours are normal" -> Enlarged Cardiomediastinum
   0; "costophrenic angles are sharp" -> Pleural Effusion 0; "lungs are clear" -> Lung Opacity 0
   and Consolidation 0 (our choice: the CheXpert labeler leaves clear lungs unmentioned; we
   read "clear" as "no airspace opacity", which says nothing about edema, nodules or pleura).
3. Each mention is classified, first rule that applies:
   - a cue inside the mention's own span ("heart is NOT enlarged", "heart MAY BE enlarged");
   - the nearest pre-cue before it in the clause, if its scope reaches the mention (at most
     10 words, not across "is/are/has", "which", "there", "and the", "seen", ...); an
     uncertainty cue right after a negation ("no suspicious nodules") counts as negation:
     ("no", "not", "without", "negative for", "free of", "clear of", "absence of",
     "resolution of", "resolved", "removal of", "rather than") or uncertainty ("possible",
     "may", "might", "could", "cannot exclude", "rule out", "suggestive of", "suggests",
     "concerning for", "question(able)", "likely", "probable", "suspicious", "suspected",
     "presumed", "borderline", "equivocal", "indeterminate", "versus", "differential"). So
     "No pleural effusion or pneumothorax" negates both, and in "possible pneumonia, no
     effusion" the effusion is negated, not uncertain;
   - a post-cue within 6 words after it, before a comma: negation ("is not seen", "has
     resolved", "is absent", "ruled out", "removed"), uncertainty ("cannot be excluded",
     "cannot be ruled out", "is not excluded", "is possible", "is suspected", "is likely");
   - alternatives: "X or Y", "X versus Y", X and Y neighbouring mentions of two observations ->
     both uncertain ("atelectasis or pneumonia"); "nodule or mass" stays positive;
   - otherwise positive.
   Pseudo-cues are ignored: "no change", "no interval change", "without change", "no
   increase/decrease", "not only", and "to suggest" (so "no opacity to suggest pneumonia"
   negates pneumonia). "pericardial effusion" is not a pleural effusion.
4. Aggregation over mentions (CheXpert's rule): positive > uncertain > negative > not
   mentioned. "No Finding" is positive when no other observation except Support Devices is
   positive or uncertain, else not mentioned (never negative, as in CheXpert); so "No acute
   cardiopulmonary process." alone gives No Finding 1. An empty text (after dropping sections)
   gives all not mentioned. The observations and values are those of `labels.py`.

Debatable conventions, fixed here: "likely" is uncertain (as in CheXpert); "consistent with"
is positive; "airspace disease" mentions both Lung Opacity and Consolidation;
"interstitial markings", "haziness", "density" mention Lung Opacity; "(congestive) heart
failure", "CHF", "vascular congestion" mention Edema; "infection" mentions Pneumonia; mentions
do not propagate up CheXpert's hierarchy (consolidation does not make Lung Opacity positive).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

from llmcxr_jax.data.labels import (
    NEGATIVE,
    NOT_MENTIONED,
    NUM_OBSERVATIONS,
    OBSERVATIONS,
    POSITIVE,
    RANK,
    UNCERTAIN,
)

_IDX = {name: i for i, name in enumerate(OBSERVATIONS)}

# --- mention phrases (lower-case regular expressions) -------------------------------------------

_HEART = r"(?:heart(?:\s+size)?|cardiac\s+(?:silhouette|size|contours?)|size\s+of\s+the\s+heart)"
_MENTIONS: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": (
        r"(?:widen(?:ed|ing)|enlarg(?:ed|ement))\s+(?:of\s+)?(?:the\s+)?(?:cardio)?mediastin\w*",
        r"(?:cardio)?mediastin(?:um|al\s+(?:silhouette|contours?|width))(?:\s+\w+){0,3}?\s+"
        r"(?:widened|enlarged|widening|enlargement)",
        r"mediastinal\s+(?:widening|enlargement)",
    ),
    "Cardiomegaly": (
        r"cardiomegaly",
        r"(?:enlarged|enlargement\s+of\s+the|large)\s+(?:cardiac\s+silhouette|heart|cardiac\s+size)",
        r"cardiac\s+enlargement",
        _HEART + r"(?:\s+\w+){0,3}?\s+enlarged",
    ),
    "Lung Opacity": (
        r"opaci\w*",
        r"infiltrat\w*",
        r"air[\s-]?space\s+disease",
        r"densit(?:y|ies)",
        r"interstitial\s+(?:markings?|pattern|prominence)",
        r"haz(?:y|iness)",
        r"reticula(?:r|tion)\w*",
    ),
    "Lung Lesion": (
        r"nodul\w*",
        r"mass(?:es)?",
        r"lesions?",
        r"tumou?rs?",
        r"neoplasms?",
        r"carcinoma",
    ),
    "Edema": (
        r"edema",
        r"(?:vascular|venous)\s+(?:congestion|engorgement)",
        r"pulmonary\s+congestion",
        r"(?:congestive\s+)?heart\s+failure",
        r"chf",
        r"fluid\s+overload",
        r"kerley",
    ),
    "Consolidation": (r"consolidat\w*", r"air[\s-]?space\s+disease"),
    "Pneumonia": (r"\w*pneumonias?", r"pneumonitis", r"infections?", r"infectious\s+process"),
    "Atelectasis": (
        r"atelecta\w*",
        r"(?:lobar|segmental|subsegmental)\s+collapse",
        r"collapse\s+of\s+the\s+(?:right|left)\s+(?:upper|middle|lower)\s+lobe",
    ),
    "Pneumothorax": (r"\w*pneumothora\w*", r"ptx"),
    "Pleural Effusion": (
        r"effusions?",
        r"pleural\s+fluid",
        r"hydrothora\w*",
        r"blunt\w*\s+(?:of\s+)?(?:the\s+)?(?:(?:right|left|bilateral|both)\s+)?"
        r"(?:costophrenic|cp)\s+(?:angles?|sulc[iu]s?)",
        r"(?:costophrenic|cp)\s+angles?\s+(?:is|are)\s+blunted",
        r"fluid\s+in\s+the\s+pleural\s+space",
    ),
    "Pleural Other": (
        r"pleural\s+(?:thickening|scarring|plaques?|calcifications?)",
        r"fibrothorax",
    ),
    "Fracture": (r"fractur\w*", r"fx"),
    "Support Devices": (
        r"(?:endotracheal|et|tracheostomy|nasogastric|ng|orogastric|og|chest|enteric|feeding|"
        r"dobhoff|gastric|drainage)\s+tubes?",
        r"(?:central\s+venous|central|picc|midline|arterial|swan[\s-]ganz|dialysis|venous|"
        r"(?:internal\s+)?jugular|ij|subclavian)\s+(?:lines?|catheters?)",
        r"picc",
        r"catheters?",
        r"pacemakers?",
        r"pacers?",
        r"pacing\s+(?:wires?|leads?)",
        r"icd",
        r"defibrillators?",
        r"(?:sternotomy|sternal)\s+wires?",
        r"(?:surgical\s+)?clips",
        r"stents?",
        r"(?:prosthetic|mechanical)\s+(?:heart\s+)?valves?",
        r"valve\s+replacement",
        r"port[\s-]?a[\s-]?cath",
        r"hardware",
        r"(?:lines\s+and\s+tubes|tubes\s+and\s+lines)",
        r"(?:support|monitoring)\s+devices?",
        r"(?:ekg|ecg)\s+leads",
    ),
}
_MENTION_RE = {
    obs: re.compile(r"(?<![\w-])(?:" + "|".join(pats) + r")(?![\w-])")
    for obs, pats in _MENTIONS.items()
}

# fixed-value (negative) statements about normal structures -> observations
_MED = r"(?:(?:hilar\s+and\s+)?mediastinal\s+(?:contours?|silhouettes?|width)|mediastinum)"
_CMED = (
    r"(?:cardiomediastinal\s+(?:silhouettes?|contours?|size)|cardiac\s+and\s+mediastinal\s+"
    r"(?:contours?|silhouettes?))"
)
_SUBJ = rf"(?:{_CMED}|{_HEART}|{_MED})"
_NORMAL_WORD = r"(?:normal|unremarkable|within\s+normal\s+limits|not\s+enlarged|not\s+widened)"
_NORMAL_STATEMENTS: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = (
    (
        re.compile(
            rf"(?<![\w-])(?:(?:normal|unremarkable|top[\s-]normal)\s+(?:in\s+size\s+)?{_SUBJ}"
            rf"|{_SUBJ}(?:\s*(?:,|and|,\s*and)\s*{_SUBJ})*\s+(?:\w+\s+){{0,4}}?{_NORMAL_WORD})"
            r"(?![\w-])"
        ),
        (),  # the observations come from the subjects named in the match (see _statements)
    ),
    (
        re.compile(
            r"(?<![\w-])(?:(?:costophrenic|cp)\s+angles?\s+(?:is|are)\s+(?:\w+\s+)?"
            r"(?:sharp|clear|preserved)|sharp\s+(?:costophrenic|cp)\s+angles?)(?![\w-])"
        ),
        ("Pleural Effusion",),
    ),
    (
        re.compile(
            r"(?<![\w-])(?:(?:the\s+)?lungs?\s+(?:(?:are|is|remain|appear|appears)\s+)?"
            r"(?:\w+\s+){0,3}?clear|clear\s+lungs)(?![\w-])"
        ),
        ("Lung Opacity", "Consolidation"),
    ),
)
_SUBJ_CMED = re.compile(_CMED)
_SUBJ_HEART = re.compile(r"(?<!cardiomediastinal\s)(?:heart|cardiac(?!\s+and))")
_SUBJ_MED = re.compile(r"(?<!cardio)mediastin")

# --- cues ---------------------------------------------------------------------------------------

_PSEUDO = re.compile(
    r"(?<![\w-])(?:no|without)\s+(?:significant\s+|interval\s+|appreciable\s+)?"
    r"(?:change|increase|decrease|worsening)|not\s+only|to\s+suggest|pericardial\s+effusions?"
)
_PRE_UNC = re.compile(
    r"(?<![\w-])(?:possible|possibly|may|might|could|can\s*not\s+(?:exclude|rule\s+out)|"
    r"can't\s+(?:exclude|rule\s+out)|not\s+(?:be\s+)?excluded|rule\s+out|r/o|"
    r"suggest(?:s|ing|ive\s+of)|concern(?:ing)?\s+for|concerning|question(?:able|ably|ed)?|"
    r"likely|probable|probably|suspicious|suspect(?:ed)?|suspicion|presum(?:ed|ably)|"
    r"borderline|equivocal|indeterminate|uncertain|versus|vs|differential|"
    r"(?:raises?|raising)\s+the\s+possibility)(?![\w-])"
)
_PRE_NEG = re.compile(
    r"(?<![\w-])(?:no|not|without|negative\s+for|free\s+of|clear\s+of|absence\s+of|"
    r"resolution\s+of|resolved|removal\s+of|rather\s+than|nor)(?![\w-])"
)
_POST_UNC = re.compile(
    r"(?<![\w-])(?:(?:can\s*not|can't|could\s+not)\s+be\s+(?:entirely\s+|completely\s+)?"
    r"(?:excluded|ruled\s+out)|(?:is|are)?\s*not\s+(?:entirely\s+)?excluded|"
    r"(?:is|are)\s+(?:possible|suspected|questioned|likely|probable|favou?red|considered)|"
    r"may\s+be\s+present)(?![\w-])"
)
_POST_NEG = re.compile(
    r"(?<![\w-])(?:(?:(?:is|are|was|were)\s+)?(?:not|no\s+longer)\s+(?:seen|present|identified|"
    r"visuali[sz]ed|visible|evident|appreciated|demonstrated|noted|detected|apparent|observed)|"
    r"(?:has|have)\s+(?:since\s+)?(?:resolved|cleared|disappeared)|resolved|"
    r"(?:is|are|was|were)\s+absent|(?:been\s+)?ruled\s+out|(?:has|have)\s+been\s+removed|"
    r"removed)(?![\w-])"
)
_SPAN_NEG = re.compile(r"(?<![\w-])(?:not|no\s+longer)(?![\w-])")
_SPAN_UNC = re.compile(
    r"(?<![\w-])(?:may|might|could|possibly|probably|likely|borderline|questionably)(?![\w-])"
)
# words that end a pre-cue's scope (between the cue and the mention)
_TERMINATORS = re.compile(
    r"(?<![\w-])(?:but|however|although|though|which|who|whereas|while|except|aside|apart|"
    r"because|due|since|there|is|are|was|were|has|have|had|remains?|appears?|seen|noted|"
    r"identified|present|visuali[sz]ed|demonstrated|evident|appreciated|and\s+(?:the|a|an))"
    r"(?![\w-])"
)
_ALTERNATIVE = re.compile(r"^\W*(?:or|and/or|versus|vs)\W+(?:\w+\W+){0,2}?$")
_WORD = re.compile(r"\w+")
_PRE_WINDOW, _POST_WINDOW = 10, 6

# --- sections, sentences, clauses ---------------------------------------------------------------

_SECTION_NAMES = (
    r"findings|impressions?|conclusions?|indications?|history|clinical\s+history|"
    r"clinical\s+information|reason\s+for\s+(?:exam|examination|study)|comparisons?|technique|"
    r"examination|exam|procedure|notification|recommendations?|wet\s+read|addendum|"
    r"type\s+of\s+examination|study"
)
_HEADER = re.compile(rf"(?i)\b({_SECTION_NAMES})\s*:")
_DROPPED_SECTIONS = re.compile(
    r"(?i)^(?:indications?|history|clinical\s+history|clinical\s+information|reason\s+for\s+\w+|"
    r"comparisons?|technique|examination|exam|procedure|type\s+of\s+examination|study)$"
)
_SENTENCE_SPLIT = re.compile(r"(?<!\d)\.|\.(?!\d)|[!?;:\n]")
_CLAUSE_SPLIT = re.compile(
    r"(?<![\w-])(?:but|however|although|though|whereas|nevertheless|except(?:\s+for)?|"
    r"aside\s+from|apart\s+from)(?![\w-])"
)
_ABBREVIATIONS = re.compile(r"(?<![\w-])(vs|dr|e\.g|i\.e|approx|cf)\.")


def _drop_sections(text: str) -> str:
    """Remove sections that do not describe the image; keep the others' text."""
    out, pos, keep = [], 0, True
    for m in _HEADER.finditer(text):
        before = text[: m.start()].rstrip(" \t")
        at_boundary = not before or before[-1] in ".!?\n"
        if not (at_boundary or m.group(1).isupper()):
            continue
        if keep:
            out.append(text[pos : m.start()])
        keep = not _DROPPED_SECTIONS.match(" ".join(m.group(1).split()))
        pos = m.end()
        out.append("\n")
    if keep:
        out.append(text[pos:])
    return "".join(out)


def _clauses(text: str) -> list[str]:
    text = _ABBREVIATIONS.sub(lambda m: m.group(1).replace(".", ""), text.lower())
    clauses = []
    for sentence in _SENTENCE_SPLIT.split(text):
        for clause in _CLAUSE_SPLIT.split(sentence):
            clause = " ".join(clause.split())
            if clause:
                clauses.append(clause)
    return clauses


# --- classification -----------------------------------------------------------------------------


def _mask(text: str, pattern: re.Pattern[str]) -> str:
    return pattern.sub(lambda m: " " * len(m.group(0)), text)


def _mentions(clause: str) -> list[tuple[int, int, str]]:
    """(start, end, observation) of every mention, overlaps of one observation merged."""
    found = []
    for obs, pattern in _MENTION_RE.items():
        last_end = -1
        for m in pattern.finditer(clause):
            if m.start() < last_end:
                continue
            found.append((m.start(), m.end(), obs))
            last_end = m.end()
    return sorted(found)


def _cues(clause: str, unc: re.Pattern[str], neg: re.Pattern[str]) -> list[tuple[int, int, int]]:
    """(start, end, value) of cues; an uncertainty cue wins over a negation it overlaps."""
    cues = [(m.start(), m.end(), UNCERTAIN) for m in unc.finditer(clause)]
    for m in neg.finditer(clause):
        if not any(s < m.end() and m.start() < e for s, e, _ in cues):
            cues.append((m.start(), m.end(), NEGATIVE))
    return sorted(cues)


def _classify(
    clause: str,
    start: int,
    end: int,
    obs: str,
    pre: list[tuple[int, int, int]],
    post: list[tuple[int, int, int]],
    mentions: list[tuple[int, int, str]],
) -> int:
    span = clause[start:end]
    if _SPAN_UNC.search(span):
        return UNCERTAIN
    if _SPAN_NEG.search(span):
        return NEGATIVE
    reaching = [c for c in pre if c[1] <= start]
    if reaching:
        s, e, value = reaching[-1]
        between = clause[e:start]
        if not _TERMINATORS.search(between) and len(_WORD.findall(between)) <= _PRE_WINDOW:
            if value == UNCERTAIN and len(reaching) > 1:  # "no suspicious nodules"
                _s, e2, v2 = reaching[-2]
                if v2 == NEGATIVE and len(_WORD.findall(clause[e2:s])) <= 1:
                    return NEGATIVE
            return value
    after = clause[end:].split(",", 1)[0]
    for s, e, value in post:
        if s < end or e > end + len(after):
            continue
        between = clause[end:s]
        if len(_WORD.findall(between)) <= _POST_WINDOW and not re.search(
            r"(?<![\w-])(?:which|but|there)(?![\w-])", between
        ):
            return value
    before = [m for m in mentions if m[1] <= start]
    after_ = [m for m in mentions if m[0] >= end]
    for s, e, other in ([before[-1]] if before else []) + ([after_[0]] if after_ else []):
        gap = clause[end:s] if s >= end else clause[e:start]
        if other != obs and _ALTERNATIVE.match(gap):
            return UNCERTAIN
    return POSITIVE


def _statements(clause: str) -> list[tuple[str, int]]:
    out = []
    for pattern, observations in _NORMAL_STATEMENTS:
        for m in pattern.finditer(clause):
            span = m.group(0)
            if _SPAN_UNC.search(span) or (
                _SPAN_NEG.search(span) and not re.search(r"not\s+(?:enlarged|widened)", span)
            ):
                continue
            obs = observations
            if not obs:
                obs = ()
                if _SUBJ_CMED.search(span):
                    obs += ("Cardiomegaly", "Enlarged Cardiomediastinum")
                if _SUBJ_HEART.search(_SUBJ_CMED.sub(" ", span)):
                    obs += ("Cardiomegaly",)
                if _SUBJ_MED.search(_SUBJ_CMED.sub(" ", span)):
                    obs += ("Enlarged Cardiomediastinum",)
            out.extend((o, NEGATIVE) for o in obs)
    return out


def clause_labels(clause: str) -> list[tuple[str, int]]:
    """(observation, value) for every mention in one lower-case clause (for debugging)."""
    masked = _mask(clause, _PSEUDO)
    mentions = _mentions(masked)
    pre = _cues(masked, _PRE_UNC, _PRE_NEG)
    post = _cues(masked, _POST_UNC, _POST_NEG)
    out = _statements(masked)
    for start, end, obs in mentions:
        out.append((obs, _classify(masked, start, end, obs, pre, post, mentions)))
    return out


def aggregate(values: dict[str, list[int]] | Iterable[tuple[str, int]]) -> np.ndarray:
    """(observation, value) pairs -> int8 [14]: positive > uncertain > negative > not mentioned."""
    labels = np.full(NUM_OBSERVATIONS, NOT_MENTIONED, np.int8)
    pairs = ((o, v) for o, vs in values.items() for v in vs) if isinstance(values, dict) else values
    for obs, value in pairs:
        i = _IDX[obs]
        if RANK[value] > RANK[int(labels[i])]:
            labels[i] = value
    pathology = np.delete(labels[1:], _IDX["Support Devices"] - 1)
    labels[0] = NOT_MENTIONED if np.isin(pathology, (POSITIVE, UNCERTAIN)).any() else POSITIVE
    return labels


def label_report(text: str) -> np.ndarray:
    """One report (any sections) -> int8 [14] in CheXpert order and value convention."""
    kept = _drop_sections(text or "")
    clauses = _clauses(kept)
    if not clauses:
        return np.full(NUM_OBSERVATIONS, NOT_MENTIONED, np.int8)
    return aggregate(pair for clause in clauses for pair in clause_labels(clause))


def label_reports(texts: Iterable[str]) -> np.ndarray:
    """Many reports -> int8 [N, 14]."""
    rows = [label_report(t) for t in texts]
    return np.stack(rows) if rows else np.zeros((0, NUM_OBSERVATIONS), np.int8)
