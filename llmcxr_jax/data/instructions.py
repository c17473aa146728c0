"""Dolly's instruction template and LLM-CXR's four tasks, as paragraphs for the tokenizer.

    Below is an instruction that describes a task. Write a response that appropriately ...

    ### Instruction:
    {instruction}

    Input:
    {input}

    ### Response:
    {response}

    ### End

(the `Input:` block only when there is an input). At inference the prompt ends right after
`### Response:\\n`. Tasks: CXR-to-report (input image, response report), report-to-CXR (input
report, response image), CXR-VQA (input image, the question as instruction) and plain
instruction following (databricks-dolly-15k-style records).

Each training image serves one direction only: sorted by id, images alternate between
CXR-to-report and report-to-CXR (`assign_directions`, seedable). Instruction phrasings are
picked deterministically from (seed, image id), so a run's data is reproducible.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmcxr_jax.errors import InputError
from llmcxr_jax.tokenizer import (
    END_KEY,
    IMAGE_PLACEHOLDER,
    INSTRUCTION_KEY,
    RESPONSE_KEY_NL,
    Paragraph,
)

INTRO = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
INPUT_KEY = "Input:"

CXR_TO_REPORT = (
    "Generate free-text radiology reports for the entered chest X-ray images.",
    "Write a radiology report for this chest X-ray.",
    "Describe the findings of the chest radiograph below as a radiologist would.",
    "Read this chest X-ray and write the report.",
    "Provide the radiology report corresponding to the given chest X-ray image.",
    "What does this chest X-ray show? Answer with a free-text radiology report.",
    "Interpret the following chest radiograph and report your findings.",
    "Produce a report of the findings and impression for this chest X-ray.",
    "You are a radiologist. Report on the chest X-ray given as input.",
    "Write the findings of this chest X-ray in the style of a radiology report.",
    "Examine the chest X-ray image and generate its radiology report.",
    "Summarise the chest X-ray below in a radiology report.",
)

REPORT_TO_CXR = (
    "Generate a chest X-ray image that corresponds to the entered free-text radiology reports "
    "for the chest X-ray image.",
    "Create a chest X-ray image that matches this radiology report.",
    "Draw the chest radiograph described by the following report.",
    "Generate a chest X-ray consistent with the findings below.",
    "Synthesise a chest X-ray image for this radiology report.",
    "Produce the chest X-ray that this report describes.",
    "Given the radiology report, generate the corresponding chest X-ray image.",
    "Make a chest radiograph showing what the report below describes.",
    "Render a chest X-ray image from the following free-text report.",
    "Generate an image of a chest X-ray matching the entered report.",
    "Create the chest X-ray image that goes with this radiology report.",
    "From this radiology report, generate a chest X-ray.",
)


def prompt(instruction: str, input_text: str | None = None) -> str:
    """The text the model continues: everything up to and including `### Response:\\n`."""
    parts = [INTRO, "", INSTRUCTION_KEY, instruction, ""]
    if input_text:
        parts += [INPUT_KEY, input_text, ""]
    return "\n".join(parts) + "\n" + RESPONSE_KEY_NL


def paragraph_text(instruction: str, input_text: str | None, response: str) -> str:
    """A whole training paragraph (prompt, response, `### End`)."""
    return f"{prompt(instruction, input_text)}{response}\n\n{END_KEY}"


def _pick(options: Sequence[str], seed: int, key: str) -> str:
    h = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return options[int.from_bytes(h[:8], "little") % len(options)]


def cxr_to_report(
    report: str, codes: np.ndarray, *, seed: int = 0, key: str = "", instruction: str | None = None
) -> Paragraph:
    ins = instruction or _pick(CXR_TO_REPORT, seed, key)
    return Paragraph(paragraph_text(ins, IMAGE_PLACEHOLDER, report), np.asarray(codes))


def report_to_cxr(
    report: str, codes: np.ndarray, *, seed: int = 0, key: str = "", instruction: str | None = None
) -> Paragraph:
    ins = instruction or _pick(REPORT_TO_CXR, seed, key)
    return Paragraph(paragraph_text(ins, report, IMAGE_PLACEHOLDER), np.asarray(codes))


def vqa(question: str, answer: str, codes: np.ndarray) -> Paragraph:
    return Paragraph(paragraph_text(question, IMAGE_PLACEHOLDER, answer), np.asarray(codes))


def instruction_following(instruction: str, context: str, response: str) -> Paragraph:
    if IMAGE_PLACEHOLDER in instruction + context + response:
        # a literal "<image>" in text data would be read as an image slot
        instruction, context, response = (
            s.replace(IMAGE_PLACEHOLDER, "< image >") for s in (instruction, context, response)
        )
    return Paragraph(paragraph_text(instruction, context or None, response))


# Prompts for inference (no response): the model writes it.


def cxr_to_report_prompt(codes: np.ndarray, instruction: str = CXR_TO_REPORT[0]) -> Paragraph:
    return Paragraph(prompt(instruction, IMAGE_PLACEHOLDER), np.asarray(codes))


def report_to_cxr_prompt(report: str, instruction: str = REPORT_TO_CXR[0]) -> Paragraph:
    return Paragraph(prompt(instruction, report))


def vqa_prompt(question: str, codes: np.ndarray) -> Paragraph:
    return Paragraph(prompt(question, IMAGE_PLACEHOLDER), np.asarray(codes))


def assign_directions(ids: Sequence[str], seed: int | None = None) -> dict[str, str]:
    """Each image id -> "report" (CXR-to-report) or "image" (report-to-CXR), half each.

    Sorted ids alternate, as in LLM-CXR; with a seed, the sorted ids are first permuted by that
    seed, so which half gets which direction changes with it while staying balanced.
    """
    order = sorted(set(ids))
    if seed is not None:
        perm = np.random.default_rng(seed).permutation(len(order))
        order = [order[i] for i in perm]
    return {rid: ("report" if k % 2 == 0 else "image") for k, rid in enumerate(order)}


# --------------------------------------------------------------------------------------------
# Plain instruction data (databricks-dolly-15k format)
# --------------------------------------------------------------------------------------------


def read_dolly_jsonl(path: str | os.PathLike) -> tuple[list[dict[str, str]], list[str]]:
    """Records with instruction / context / response from a JSONL file, and the problems of the
    lines that were skipped (each names the file and the line)."""
    records: list[dict[str, str]] = []
    problems: list[str] = []
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: unreadable ({e})") from e
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d: Any = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{p}:{n}: not JSON ({e.msg})")
            continue
        if not isinstance(d, dict) or not all(
            isinstance(d.get(k), str) for k in ("instruction", "response")
        ):
            problems.append(f"{p}:{n}: needs string fields instruction and response")
            continue
        if not d["instruction"].strip() or not d["response"].strip():
            problems.append(f"{p}:{n}: empty instruction or response")
            continue
        records.append(
            {
                "instruction": d["instruction"].strip(),
                "context": str(d.get("context") or "").strip(),
                "response": d["response"].strip(),
                "category": str(d.get("category") or ""),
            }
        )
    return records, problems
