"""Radiology report sections and LLM-CXR's per-stage text rules.

Why this module exists: LLM-CXR trains on two sections of a free-text report (FINDINGS and
IMPRESSION) and picks different texts and images per finetuning stage. The released code finds
the sections with `text.split("FINDINGS:")` / `split("IMPRESSION:")`, which silently drops every
report whose header is spelled differently ("IMPRESSIONS:", "Impression:", "CONCLUSION:") or that
repeats a header. Here the sections are parsed once, robustly, when a data set is prepared
(`data/tfds/`), and the stage rules are small functions the input pipeline applies to records.

Section parsing (`extract_sections`), following the conventions of MIMIC-CXR's own section
parser (`create_section_files.py`):

- A header is a known section name (table `_HEADER_NAMES`: findings, impression, conclusion,
  indication, history, comparison, technique, examination, notification, recommendation(s),
  wet read, addendum, ...; singular/plural, a few frequent MIMIC typos, any case, any spacing
  between its words and before the colon) followed by `:`. It counts as a header at the start
  of a line, after a sentence end (`.`, `!`, `?`, `;`), or anywhere when written in capitals; a
  lower-case "impression:" in mid-sentence is text. A known header alone on its line in capitals
  needs no colon. `FINAL REPORT` (MIMIC's title line) is a header without a colon.
- Any other capitalised `NAME:` at the start of a line ("WET READ:", "PA AND LATERAL VIEWS OF
  THE CHEST:") is an unknown header: it ends the section before it, and its text goes to
  `other`. Text before the first header is the `preamble`.
- CONCLUSION(S) and IMPRESSION(S) are the impression. "FINDINGS AND IMPRESSION:" (and
  "FINDINGS/IMPRESSION:", "IMPRESSION AND FINDINGS:") goes to the impression only, as in
  MIMIC-CXR's parser: the combined text is the conclusion, and copying it to the findings would
  make the stage-1 text (findings + impression) say everything twice.
- A section that occurs more than once is the concatenation of its parts, in order.
- Clean-up (`clean_text`): line breaks and runs of spaces collapse to one space, spaces before
  `.,;:!?` are removed, and de-identification placeholders (runs of three or more underscores)
  are kept as exactly `___`. `clean_report` does the same per line but keeps the line
  structure (one blank line at most between paragraphs) for the stored whole report.

Stage rules (see the facts file; the released code agrees):

- `stage1_text`: FINDINGS + " " + IMPRESSION; with no findings, IMPRESSION alone; with no
  impression, FINDINGS alone (only samples with neither are dropped, and the released code also
  keeps a findings-only report); `None` when neither is there.
- `stage2_text`: IMPRESSION, or `None`.
- `select_stage2`: PA/AP images of the earliest study of each patient that have an impression,
  one image per patient (see its docstring).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

# canonical section keys returned by `extract_sections` (always all present)
SECTIONS = (
    "preamble",
    "examination",
    "indication",
    "history",
    "technique",
    "comparison",
    "findings",
    "impression",
    "recommendations",
    "notification",
    "wet_read",
    "addendum",
    "other",
)

# header text (lower case, single spaces) -> canonical section
_HEADER_NAMES: dict[str, str] = {
    "findings": "findings",
    "finding": "findings",
    "findngs": "findings",
    "findins": "findings",
    "finidngs": "findings",
    "impression": "impression",
    "impressions": "impression",
    "impresson": "impression",
    "impresion": "impression",
    "impession": "impression",
    "conclusion": "impression",
    "conclusions": "impression",
    "findings and impression": "impression",
    "findings and impressions": "impression",
    "impression and findings": "impression",
    "findings/impression": "impression",
    "findings & impression": "impression",
    "examination": "examination",
    "exam": "examination",
    "type of examination": "examination",
    "indication": "indication",
    "indications": "indication",
    "clinical indication": "indication",
    "reason for examination": "indication",
    "reason for exam": "indication",
    "history": "history",
    "clinical history": "history",
    "clinical information": "history",
    "patient history": "history",
    "technique": "technique",
    "comparison": "comparison",
    "comparisons": "comparison",
    "comparison exam": "comparison",
    "comparison film": "comparison",
    "reference exam": "comparison",
    "recommendation": "recommendations",
    "recommendations": "recommendations",
    "recommendation(s)": "recommendations",
    "notification": "notification",
    "notifications": "notification",
    "wet read": "wet_read",
    "wetread": "wet_read",
    "addendum": "addendum",
    "final report": "final_report",
}


def _header_pattern(name: str) -> str:
    # words may be separated by any whitespace; "/", "&" and "(s)" may have spaces around them
    parts = re.split(r"\s+", name)
    words = []
    for p in parts:
        p = re.escape(p).replace(r"\(s\)", r"\s*\(s\)").replace("/", r"\s*/\s*")
        words.append(p)
    return r"\s+".join(words)


_KNOWN = sorted(_HEADER_NAMES, key=len, reverse=True)  # longest first: "findings and impression"
_KNOWN_RE = re.compile(
    r"(?<![A-Za-z])(?P<name>" + "|".join(_header_pattern(n) for n in _KNOWN) + r")(?![A-Za-z])"
    r"(?P<colon>[ \t]*:)?",
    re.IGNORECASE,
)
# an unknown capitalised header at the start of a line: "WET READ:", "PA AND LATERAL CHEST:"
_UNKNOWN_RE = re.compile(r"^[ \t]*(?P<name>[A-Z][A-Z0-9 ()/,&'-]*[A-Z)])[ \t]*:", re.MULTILINE)
_SENTENCE_ENDS = ".!?;"
_UNDERSCORES_RE = re.compile(r"_{3,}")
_SPACE_BEFORE_PUNCT_RE = re.compile(r"[ \t]+([.,;:!?])(?=\s|$)")
_SPACES_RE = re.compile(r"\s+")


def _as_str(text: Any) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes | bytearray | memoryview):
        return bytes(text).decode("utf-8")
    return str(text)


def clean_text(text: Any) -> str:
    """One line: whitespace collapsed, `___` placeholders normalised, no space before `.,;:!?`."""
    text = _UNDERSCORES_RE.sub("___", _as_str(text))
    text = _SPACES_RE.sub(" ", text)
    return _SPACE_BEFORE_PUNCT_RE.sub(r"\1", text).strip()


def clean_report(text: Any) -> str:
    """A whole report, cleaned like `clean_text` per line, keeping paragraphs (one blank line)."""
    lines = _as_str(text).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    out: list[str] = []
    for line in lines:
        line = clean_text(line)
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()


def _line_start(text: str, pos: int) -> int:
    return text.rfind("\n", 0, pos) + 1


def _after_sentence_end(text: str, pos: int) -> bool:
    prev = text[max(0, pos - 200) : pos].rstrip()
    return bool(prev) and prev[-1] in _SENTENCE_ENDS


def _find_headers(text: str) -> list[tuple[int, int, str]]:
    """(start, end, canonical section or "other") of every header, in order."""
    found: list[tuple[int, int, str]] = []
    for m in _KNOWN_RE.finditer(text):
        raw = m.group("name")
        key = _SPACES_RE.sub(" ", raw.lower())
        key = re.sub(r"\s*/\s*", "/", key).replace(" (s)", "(s)")
        section = _HEADER_NAMES.get(key)
        if section is None:
            continue
        before = text[_line_start(text, m.start()) : m.start()]
        at_line_start = not before.strip()
        capitals = raw.isupper()
        if m.group("colon") is None:
            # no colon: only "FINAL REPORT", or a capitalised known header alone on its line
            line_end = text.find("\n", m.end())
            rest = text[m.end() : len(text) if line_end < 0 else line_end]
            alone = at_line_start and not rest.strip()
            if not (capitals and (section == "final_report" and at_line_start or alone)):
                continue
        elif not (at_line_start or capitals or _after_sentence_end(text, m.start())):
            continue
        found.append((m.start(), m.end(), section))
    known = list(found)
    for m in _UNKNOWN_RE.finditer(text):
        start = m.start("name")
        if any(s < m.end() and start < e for s, e, _ in known):
            continue  # overlaps a known header: the known one wins
        found.append((start, m.end(), "other"))
    found.sort()
    # drop headers nested inside an earlier header's span (cannot happen often, but be safe)
    out: list[tuple[int, int, str]] = []
    for h in found:
        if out and h[0] < out[-1][1]:
            continue
        out.append(h)
    return out


def extract_sections(text: Any) -> dict[str, str]:
    """Sections of a free-text report: every key of `SECTIONS`, "" when absent (str or bytes)."""
    text = _as_str(text).replace("\r\n", "\n").replace("\r", "\n")
    parts: dict[str, list[str]] = {k: [] for k in SECTIONS}
    headers = _find_headers(text)
    first = headers[0][0] if headers else len(text)
    parts["preamble"].append(text[:first])
    for i, (_, end, section) in enumerate(headers):
        stop = headers[i + 1][0] if i + 1 < len(headers) else len(text)
        body = text[end:stop]
        if section == "final_report":
            section = "preamble"  # text between the title and the first section header
        parts[section].append(body)
    return {k: clean_text(" ".join(v)) for k, v in parts.items()}


def stage1_text(findings: Any, impression: Any) -> str | None:
    """FINDINGS + " " + IMPRESSION; either alone when the other is empty; None when both are."""
    f, i = clean_text(findings), clean_text(impression)
    text = f"{f} {i}".strip()
    return text or None


def stage2_text(impression: Any) -> str | None:
    """IMPRESSION, or None when there is none."""
    return clean_text(impression) or None


FRONTAL_VIEWS = ("PA", "AP")


def _field(record: Mapping[str, Any], key: str) -> str:
    return _as_str(record.get(key, "")).strip()


def select_stage2(records: Sequence[Mapping[str, Any]]) -> list[int]:
    """Indices (ascending) of the stage-2 records: one frontal image per patient.

    Candidates are records whose `view` is exactly "PA" or "AP" (after strip/upper; "AP AXIAL",
    "PA LLD" etc. are not) and whose `impression` is not empty. Per `subject_id`, the candidate
    with the smallest (study_datetime, study_id, id) is chosen, so it belongs to the patient's
    earliest study that has a usable frontal image; an empty study_datetime sorts after every
    known one. Values may be str or bytes.
    """
    best: dict[str, tuple[tuple[int, str, str, str], int]] = {}
    for idx, r in enumerate(records):
        if _field(r, "view").upper() not in FRONTAL_VIEWS or not stage2_text(r.get("impression")):
            continue
        when = _field(r, "study_datetime")
        key = (0 if when else 1, when, _field(r, "study_id"), _field(r, "id"))
        subject = _field(r, "subject_id")
        if subject not in best or key < best[subject][0]:
            best[subject] = (key, idx)
    return sorted(idx for _, idx in best.values())
