"""The label schema: CheXpert's 14 observations, their values, and LLM-CXR's six classes.

Every labelled record (`labels`, int8 [14]) is in `OBSERVATIONS` order with CheXpert's value
convention: `POSITIVE` 1, `NEGATIVE` 0, `UNCERTAIN` -1, `NOT_MENTIONED` -2. The labeler
(`labeler.py`), the TFDS builders (`tfds/`), VQA synthesis (`vqa.py`) and the phantoms read them
from here. `PAPER_CLASSES` are the six classes LLM-CXR evaluates on; `paper_labels` reduces the
14 observations to them. numpy only.
"""

from __future__ import annotations

import numpy as np

OBSERVATIONS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
NUM_OBSERVATIONS = len(OBSERVATIONS)
POSITIVE, NEGATIVE, UNCERTAIN, NOT_MENTIONED = 1, 0, -1, -2
# CheXpert's precedence when one observation is mentioned several times
RANK = {POSITIVE: 3, UNCERTAIN: 2, NEGATIVE: 1, NOT_MENTIONED: 0}
PAPER_CLASSES = (
    "No Finding",
    "Pneumothorax",
    "Edema",
    "Pleural Effusion",
    "Consolidation/Pneumonia",
    "Lung Lesion",
)
_IDX = {name: i for i, name in enumerate(OBSERVATIONS)}
_RANK_LUT = np.array([RANK[v] for v in range(NOT_MENTIONED, POSITIVE + 1)], np.int8)  # value + 2


def paper_labels(labels14: np.ndarray) -> np.ndarray:
    """[..., 14] -> [..., 6] over PAPER_CLASSES, same value convention.

    Consolidation/Pneumonia merges the two: positive if either is positive, else uncertain if
    either is uncertain, else negative if either is negative, else not mentioned.
    """
    labels = np.asarray(labels14)
    if labels.shape[-1] != NUM_OBSERVATIONS:
        raise ValueError(f"expected [..., {NUM_OBSERVATIONS}] labels, got {labels.shape}")
    cons, pneu = labels[..., _IDX["Consolidation"]], labels[..., _IDX["Pneumonia"]]
    merged = np.where(_RANK_LUT[cons + 2] >= _RANK_LUT[pneu + 2], cons, pneu)
    cols = [
        labels[..., _IDX["No Finding"]],
        labels[..., _IDX["Pneumothorax"]],
        labels[..., _IDX["Edema"]],
        labels[..., _IDX["Pleural Effusion"]],
        merged,
        labels[..., _IDX["Lung Lesion"]],
    ]
    return np.stack(cols, axis=-1).astype(np.int8)
