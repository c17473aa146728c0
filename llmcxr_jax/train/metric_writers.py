"""Metrics where people look: a JSONL log, TensorBoard event files, images.

TensorBoard events are written with tensorboardX (the `tb` extra; no TensorFlow). Without it,
the JSONL log still has every value.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class MetricWriter:
    def __init__(self, workdir: str | os.PathLike, *, enable_tensorboard: bool = True):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.workdir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115
        self._tb = None
        if enable_tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                log.warning(
                    "tensorboardX not installed: metrics go to metrics.jsonl only "
                    "(pip install 'llmcxr_jax[tb]')"
                )
            else:
                self._tb = SummaryWriter(str(self.workdir / "tensorboard"))

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        clean = {k: float(v) for k, v in values.items()}
        self._jsonl.write(json.dumps({"step": step, "time": time.time(), **clean}) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(k, v, step)

    def image(self, step: int, tag: str, image_uint8: np.ndarray) -> None:
        """An HxWx3 uint8 image (e.g. a grid of samples)."""
        if self._tb is not None:
            self._tb.add_image(tag, np.asarray(image_uint8), step, dataformats="HWC")

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
