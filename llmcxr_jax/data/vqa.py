"""CXR visual question answering: questions made from labels, and LLM-CXR's VQA files.

LLM-CXR's VQA set was made from MIMIC reports with ChatGPT and was never released. Here
questions come from what a record's labels say, deterministically from (seed, record id):

| type | example | answer | from |
|---|---|---|---|
| presence | "Is there a pleural effusion?" | yes / no | positive or negative labels |
| abnormalities | "What abnormalities are seen?" | the positive findings, or "none" | all labels |
| normal | "Is this chest X-ray normal?" | yes / no | No Finding |
| side | "Which side is the pneumothorax on?" | left / right / both sides | structured details |
| severity | "How large is the pleural effusion?" | small / moderate / large | structured details |

Every question carries the paper's class it is about (`category`: No Finding, Pneumothorax,
Edema, Pleural Effusion, Consolidation/Pneumonia, Lung Lesion, or "Other"), for accuracy per
category as LLM-CXR reports it, and its `qtype`. Uncertain and unmentioned findings give no
presence question: the report does not say.

LLM-CXR's own VQA files are Python-literal lists of dicts with `question` and `answer`; they are
read with `ast.literal_eval` (never `eval`).
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmcxr_jax.data.labels import NEGATIVE, OBSERVATIONS, POSITIVE
from llmcxr_jax.errors import InputError

# observation -> (phrase used in questions, paper class)
FINDINGS: dict[str, tuple[str, str]] = {
    "Cardiomegaly": ("cardiomegaly", "Other"),
    "Lung Lesion": ("a lung nodule or mass", "Lung Lesion"),
    "Edema": ("pulmonary edema", "Edema"),
    "Consolidation": ("consolidation", "Consolidation/Pneumonia"),
    "Pneumonia": ("pneumonia", "Consolidation/Pneumonia"),
    "Pneumothorax": ("a pneumothorax", "Pneumothorax"),
    "Pleural Effusion": ("a pleural effusion", "Pleural Effusion"),
    "Atelectasis": ("atelectasis", "Other"),
    "Lung Opacity": ("a lung opacity", "Other"),
    "Enlarged Cardiomediastinum": ("an enlarged cardiomediastinum", "Other"),
    "Fracture": ("a fracture", "Other"),
    "Support Devices": ("a support device", "Other"),
    "Pleural Other": ("another pleural abnormality", "Other"),
}
# phantom finding names (data/phantoms/ details) -> observation
DETAIL_NAMES = {
    "cardiomegaly": "Cardiomegaly",
    "pleural_effusion": "Pleural Effusion",
    "pneumothorax": "Pneumothorax",
    "consolidation": "Consolidation",
    "edema": "Edema",
    "lung_lesion": "Lung Lesion",
}
SIDE_WORDS = {"left": "left", "right": "right", "bilateral": "both sides"}

PRESENCE = (
    "Is there {f}?",
    "Does this chest X-ray show {f}?",
    "Is {f} seen in this image?",
    "Can you see {f} on this radiograph?",
)
ABNORMALITIES = (
    "What abnormalities are seen in this chest X-ray?",
    "Which findings does this chest X-ray show?",
    "List the abnormal findings in this image.",
)
NORMAL = (
    "Is this chest X-ray normal?",
    "Is this a normal chest radiograph?",
    "Does this image show any abnormality?",
)
SIDE = ("Which side is {f} on?", "On which side is {f} seen?")
SEVERITY = ("How severe is {f}?", "How large is {f}?", "What is the severity of {f}?")


@dataclasses.dataclass(frozen=True)
class QA:
    question: str
    answer: str
    qtype: str  # presence | abnormalities | normal | side | severity | file
    category: str  # the paper's class, or "Other"


def _rng(seed: int, key: str) -> np.random.Generator:
    h = hashlib.sha256(f"{seed}:vqa:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "little"))


def synthesize(
    labels: Sequence[int],
    details: str | dict | None = None,
    *,
    seed: int = 0,
    key: str = "",
    max_questions: int = 4,
) -> list[QA]:
    """Up to `max_questions` QAs for one image, deterministic in (seed, key)."""
    labels = np.asarray(labels)
    rng = _rng(seed, key)
    detail_list = _details(details)
    qas: list[QA] = []
    positives = [o for o in FINDINGS if labels[OBSERVATIONS.index(o)] == POSITIVE]
    for obs, (phrase, category) in FINDINGS.items():
        v = labels[OBSERVATIONS.index(obs)]
        if v in (POSITIVE, NEGATIVE):
            q = PRESENCE[rng.integers(len(PRESENCE))].format(f=phrase)
            qas.append(QA(q, "yes" if v == POSITIVE else "no", "presence", category))
    nf = labels[OBSERVATIONS.index("No Finding")]
    if nf == POSITIVE or positives:
        normal = nf == POSITIVE and not positives
        q = NORMAL[rng.integers(len(NORMAL))]
        says_normal = "normal" in q.lower() and "abnormality" not in q.lower()
        qas.append(QA(q, "yes" if normal == says_normal else "no", "normal", "No Finding"))
        answer = (
            ", ".join(FINDINGS[o][0].removeprefix("a ").removeprefix("an ") for o in positives)
            or "none"
        )
        qas.append(
            QA(
                ABNORMALITIES[rng.integers(len(ABNORMALITIES))],
                answer,
                "abnormalities",
                "No Finding" if not positives else FINDINGS[positives[0]][1],
            )
        )
    for d in detail_list:
        obs = DETAIL_NAMES.get(d.get("name", ""))
        if obs is None:
            continue
        phrase, category = FINDINGS[obs]
        phrase = phrase.removeprefix("a ").removeprefix("an ")
        phrase = "the " + phrase if not phrase.startswith(("pulmonary", "cardio")) else phrase
        if d.get("side") in SIDE_WORDS:
            q = SIDE[rng.integers(len(SIDE))].format(f=phrase)
            qas.append(QA(q, SIDE_WORDS[d["side"]], "side", category))
        if d.get("severity"):
            q = SEVERITY[rng.integers(len(SEVERITY))].format(f=phrase)
            qas.append(QA(q, str(d["severity"]), "severity", category))
    if len(qas) > max_questions:
        keep = sorted(rng.choice(len(qas), size=max_questions, replace=False))
        qas = [qas[i] for i in keep]
    return qas


def _details(details: str | dict | list | None) -> list[dict[str, Any]]:
    if not details:
        return []
    d = json.loads(details) if isinstance(details, (str, bytes)) else details
    if isinstance(d, dict):
        d = d.get("findings", [])
    return [x for x in d if isinstance(x, dict)] if isinstance(d, list) else []


def read_llmcxr_vqa(path: str | os.PathLike) -> list[QA]:
    """LLM-CXR's VQA format: a Python-literal list of dicts with `question` and `answer`."""
    p = Path(path)
    try:
        data = ast.literal_eval(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: unreadable ({e})") from e
    except (ValueError, SyntaxError) as e:
        raise InputError(f"{p}: not a Python-literal list of dicts ({type(e).__name__})") from e
    if not isinstance(data, list):
        raise InputError(f"{p}: holds a {type(data).__name__}, expected a list of dicts")
    out = []
    for i, d in enumerate(data):
        if not (
            isinstance(d, dict)
            and isinstance(d.get("question"), str)
            and isinstance(d.get("answer"), str)
        ):
            raise InputError(f"{p}: item {i} is not a dict with string question and answer")
        out.append(
            QA(d["question"].strip(), d["answer"].strip(), "file", str(d.get("category", "Other")))
        )
    return out


def normalize_answer(text: str) -> str:
    """Lower-case, punctuation-free answer for exact-match accuracy."""
    keep = "".join(c.lower() if c.isalnum() or c.isspace() or c == "," else " " for c in text)
    return " ".join(keep.split())
