"""The one record schema shared by every CXR TFDS builder, and what the builders share.

Why: the input pipeline (`data/pipeline.py`), VQA synthesis and evaluation read MIMIC-CXR-JPG,
Open-i and the embedded phantoms through the same code, so all three data sets are prepared
into the same fields with the same meanings (`FEATURE_DOC`). Preparation never stops for one bad
item: records that cannot be used are skipped and counted per split and reason (`SKIP_REASONS`),
the counts are stored in `builder.info.metadata["skip_counts"]` (so they travel with the
prepared data and can be read later with `skip_counts`), and logged at the end of preparation.

Counting unit: one skipped record (image), except `unreadable_report` in Open-i and
`missing_image` for an Open-i report that lists no image at all, where the images a broken
report would have had are unknown and the report file is counted once.

A split in which nothing is usable is left out (TFDS cannot write an empty split), with a
warning; its skip counts are still recorded. Nothing usable in any split is an error (most
likely a wrong manual dir or codes_dir), not an empty data set.

Records are written as `array_record` (no TensorFlow needed) and read back with
`builder.as_data_source(split)` or `tfds.data_source(name, data_dir=..., split=...)`, which
Grain takes directly. Text comes back as bytes, tensors as numpy. TFDS stores records in its
own (key-hashed) order, not in generation order.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import itertools
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image
from tensorflow_datasets.core import utils as tfds_utils

from llmcxr_jax.data import codes as codes_store
from llmcxr_jax.data.labels import NOT_MENTIONED, NUM_OBSERVATIONS
from llmcxr_jax.errors import InputError, MissingInputError

log = logging.getLogger(__name__)

FEATURE_DOC = {
    "id": "image id (MIMIC dicom_id; Open-i image name without extension; phantom id)",
    "subject_id": "patient (Open-i has none: the report id)",
    "study_id": "study (Open-i: the report id)",
    "view": 'view position upper-case ("PA", "AP", "LATERAL", "LL", ...); "" when unknown',
    "study_datetime": 'sortable "YYYYMMDDTHHMMSS"; "" when unknown',
    "findings": "FINDINGS section, cleaned (data/reports.py)",
    "impression": "IMPRESSION section, cleaned",
    "report": "the whole cleaned report",
    "labels": "int8[14] CheXpert order: 1 positive, 0 negative, -1 uncertain, -2 not mentioned",
    "label_source": '"chexpert" (MIMIC CSV), "mesh+labeler" (Open-i), "ground_truth" (phantoms)',
    "details": 'JSON: phantoms their finding details; Open-i {"mesh": [...]}; MIMIC "{}"',
    "image_path": "path relative to the manual dir (MIMIC), archive member (Open-i), '' phantoms",
    "codes": "int16 VQ-GAN codes of the image; empty when no codes_dir was given",
    "image": "(image configs only) grey uint8 [res, res, 1] PNG, LLM-CXR preprocessing",
}
TEXT_FIELDS = (
    "id",
    "subject_id",
    "study_id",
    "view",
    "study_datetime",
    "findings",
    "impression",
    "report",
    "label_source",
    "details",
    "image_path",
)

SKIP_REASONS = (
    "missing_report",  # no report file for the study
    "unreadable_report",  # report file not UTF-8, malformed XML, ...
    "empty_report",  # neither FINDINGS nor IMPRESSION
    "missing_image",  # image file not on disk / not in the archive
    "missing_codes",  # codes_dir given, no codes for this image
    "invalid_codes",  # codes not num_codes long, or a code outside [0, n_embed)
    "unreadable_image",  # image configs: the image cannot be decoded or is too small
)
# reasons whose every occurrence is logged with the file; others: the first few per split
_ALWAYS_LOGGED = ("unreadable_report", "unreadable_image", "missing_image")
_LOG_FIRST = 10


def features(resolution: int | None) -> tfds.features.FeaturesDict:
    """The shared schema; with `resolution`, plus a grey PNG `image` of that size."""
    text = tfds.features.Text
    spec: dict[str, Any] = {k: text(doc=FEATURE_DOC[k]) for k in TEXT_FIELDS}
    spec["labels"] = tfds.features.Tensor(
        shape=(NUM_OBSERVATIONS,), dtype=np.int8, doc=FEATURE_DOC["labels"]
    )
    spec["codes"] = tfds.features.Tensor(shape=(None,), dtype=np.int16, doc=FEATURE_DOC["codes"])
    if resolution is not None:
        spec["image"] = tfds.features.Image(
            shape=(resolution, resolution, 1), encoding_format="png", doc=FEATURE_DOC["image"]
        )
    return tfds.features.FeaturesDict(spec)


def empty_labels() -> np.ndarray:
    return np.full((NUM_OBSERVATIONS,), NOT_MENTIONED, np.int8)


def make_record(**fields: Any) -> dict[str, Any]:
    """A record of the schema: missing text fields are "", labels default to not mentioned."""
    unknown = set(fields) - set(TEXT_FIELDS) - {"labels", "codes", "image"}
    if unknown:
        raise KeyError(f"not in the record schema: {sorted(unknown)}")
    rec: dict[str, Any] = {k: str(fields.get(k, "") or "") for k in TEXT_FIELDS}
    rec["details"] = rec["details"] or "{}"
    labels = fields.get("labels")
    rec["labels"] = empty_labels() if labels is None else np.asarray(labels, np.int8)
    if rec["labels"].shape != (NUM_OBSERVATIONS,):
        raise ValueError(f"labels must have shape ({NUM_OBSERVATIONS},): {rec['labels'].shape}")
    codes = fields.get("codes")
    rec["codes"] = np.zeros((0,), np.int16) if codes is None else np.asarray(codes, np.int16)
    if "image" in fields:
        rec["image"] = fields["image"]
    return rec


# --- images -----------------------------------------------------------------------------------


def png_bytes(grey: np.ndarray) -> bytes:
    """uint8 [H, W] or [H, W, 1] -> PNG bytes (greyscale). TFDS cannot encode arrays without TF."""
    arr = np.asarray(grey)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise ValueError(f"expected uint8 [H, W], got {arr.dtype} {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr), "L").save(buf, format="PNG")
    return buf.getvalue()


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> [H, W]: the channel itself for grey images, else ITU-R 601 luma."""
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return np.ascontiguousarray(rgb[..., 0])
    luma = rgb.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32)
    return np.rint(np.clip(luma, 0, 255)).astype(np.uint8)


def cxr_png(src: Any, resolution: int, *, allow_upscale: bool = False, name: str) -> bytes:
    """Read (path or bytes) and preprocess LLM-CXR style (data/images.py), store the grey PNG.

    Raises `images.ImageError` for a file that cannot be used.
    """
    from llmcxr_jax.data import images

    rgb = images.read_image(src, name=name)
    x = images.preprocess(rgb, resolution, allow_upscale=allow_upscale, name=name)
    return png_bytes(to_grey(images.to_uint8(x)))


# --- VQ-GAN codes -----------------------------------------------------------------------------


class Codes:
    """The codes written by `encode-images` (a data/codes.py store), looked up by code id."""

    def __init__(self, codes_dir: str | os.PathLike):
        self.dir = Path(codes_dir)
        manifest_file = self.dir / codes_store.MANIFEST
        if not manifest_file.is_file():
            raise MissingInputError(f"{manifest_file}: no manifest (not an encode-images output)")
        try:
            manifest = json.loads(manifest_file.read_text())
            self.num_codes = int(manifest["num_codes"])
            self.n_embed = int(manifest["n_embed"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(
                f"{manifest_file}: unreadable manifest ({type(e).__name__}: {e})"
            ) from e
        if self.n_embed > np.iinfo(np.int16).max + 1:
            raise InputError(f"{codes_dir}: n_embed {self.n_embed} does not fit the int16 codes")
        self._codes: dict[str, np.ndarray] = {}
        for cid, codes in codes_store.iter_codes(self.dir):
            self._codes[str(cid)] = np.asarray(codes)

    def __len__(self) -> int:
        return len(self._codes)

    def lookup(self, code_id: str) -> tuple[np.ndarray | None, str | None]:
        """(int16 codes, None) or (None, "missing_codes" | "invalid_codes")."""
        codes = self._codes.get(code_id)
        if codes is None:
            return None, "missing_codes"
        if codes.shape != (self.num_codes,) or codes.min() < 0 or codes.max() >= self.n_embed:
            return None, "invalid_codes"
        return codes.astype(np.int16), None


# --- skips ------------------------------------------------------------------------------------


class SkipLog:
    """Per-split skip counts, written into the builder's metadata as they happen."""

    def __init__(self, metadata: Mapping[str, Any], splits: list[str], dataset: str):
        self.dataset = dataset
        self.counts: dict[str, dict[str, int]] = {s: dict.fromkeys(SKIP_REASONS, 0) for s in splits}
        self._logged: Counter[tuple[str, str]] = Counter()
        metadata["skip_counts"] = self.counts  # type: ignore[index]  # the same dict, updated

    def skip(self, split: str, reason: str, what: str, message: str = "", n: int = 1) -> None:
        """Count `n` skipped records of `split` for `reason`; `what` names the file/record."""
        if reason not in SKIP_REASONS:
            raise KeyError(f"unknown skip reason {reason!r}")
        self.counts.setdefault(split, dict.fromkeys(SKIP_REASONS, 0))[reason] += n
        self._logged[split, reason] += 1
        k = self._logged[split, reason]
        if reason in _ALWAYS_LOGGED or k <= _LOG_FIRST:
            detail = f": {message}" if message else ""
            log.warning("%s/%s: skipped %s (%s)%s", self.dataset, split, what, reason, detail)
        elif k == _LOG_FIRST + 1:
            log.warning(
                "%s/%s: more %s skips are not logged one by one", self.dataset, split, reason
            )

    def summary(self) -> None:
        for split, counts in self.counts.items():
            nonzero = {r: n for r, n in counts.items() if n}
            total = sum(nonzero.values())
            level = logging.WARNING if total else logging.INFO
            log.log(level, "%s/%s: %d skipped %s", self.dataset, split, total, nonzero or "")


def skip_counts(builder: tfds.core.DatasetBuilder) -> dict[str, dict[str, int]]:
    """{split: {reason: count}} recorded when `builder`'s data was prepared ({} if unknown)."""
    meta = builder.info.metadata
    if meta is None or "skip_counts" not in meta:
        return {}
    return {s: {r: int(n) for r, n in c.items()} for s, c in meta["skip_counts"].items()}


# --- builder base -----------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class CxrConfig(tfds.core.BuilderConfig):
    """`resolution`: store `image` at this size (None: paths only). `split_sizes`: defaults."""

    resolution: int | None = None
    split_sizes: tuple[tuple[str, int], ...] = ()


class CxrBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared by the CXR builders: schema, `codes_dir`, array_record, counted skips.

    Builder kwargs: `codes_dir` (an encode-images output; then every record must have valid
    codes), `allow_upscale` (image configs: images smaller than the resolution are upscaled
    instead of skipped). Everything else goes to `tfds.core.GeneratorBasedBuilder`;
    `file_format` defaults to "array_record".
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    DESCRIPTION = ""
    HOMEPAGE = ""
    CITATION = ""
    SPLITS: tuple[str, ...] = ("train", "validate", "test")

    def __init__(
        self,
        *,
        codes_dir: str | os.PathLike | None = None,
        allow_upscale: bool = False,
        **kwargs: Any,
    ):
        kwargs.setdefault("file_format", "array_record")
        self.codes_dir = codes_dir
        self.allow_upscale = allow_upscale
        self._skips: SkipLog | None = None
        super().__init__(**kwargs)

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path | None:
        """The file defining the builder.

        TFDS's own lookup goes through `importlib_resources` for builders defined in packages,
        which is not installed here; this is TFDS's own fallback, used for every module.
        """
        try:
            return epath.Path(inspect.getfile(cls))
        except (TypeError, OSError):
            return None

    @property
    def resolution(self) -> int | None:
        return getattr(self.builder_config, "resolution", None)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=features(self.resolution),
            homepage=self.HOMEPAGE or None,
            citation=self.CITATION or None,
            metadata=tfds.core.MetadataDict(),
        )

    def _load_codes(self) -> Codes | None:
        if self.codes_dir is None:
            return None
        codes = Codes(self.codes_dir)
        log.info("%s: %d code entries from %s", self.name, len(codes), self.codes_dir)
        return codes

    def _start_skips(self, splits: list[str]) -> SkipLog:
        self._skips = SkipLog(self.info.metadata, splits, self.name)
        return self._skips

    def _non_empty(self, generators: dict[str, Iterator[Any]]) -> dict[str, Iterator[Any]]:
        """Drop splits that yield nothing (TFDS cannot write an empty split), with a warning.

        Each split's first record is made here, the rest lazily. No usable record at all is
        an error (most likely the wrong manual dir or codes_dir), with the skip counts.
        """
        out: dict[str, Iterator[Any]] = {}
        for split, gen in generators.items():
            try:
                first = next(gen)
            except StopIteration:
                log.warning("%s/%s: no usable records, the split is left out", self.name, split)
                continue
            out[split] = itertools.chain([first], gen)
        if not out:
            counts = self._skips.counts if self._skips is not None else {}
            raise InputError(f"{self.name}: no usable records in any split; skipped: {counts}")
        return out

    def _download_and_prepare(self, dl_manager: Any, download_config: Any) -> None:
        super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
        if self._skips is not None:
            self._skips.summary()
