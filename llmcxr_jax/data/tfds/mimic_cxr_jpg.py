"""MIMIC-CXR-JPG (with MIMIC-CXR's free-text reports) as a TFDS builder of the shared schema.

Why: LLM-CXR is finetuned on MIMIC-CXR-JPG. Preparing it once into `array_record` (sections
parsed, labels and view/time joined from the CSVs, VQ-GAN codes attached) makes every later
step a random-access read that Grain can shuffle and shard, instead of re-joining four CSVs and
377k report files per run. The data is credentialed (PhysioNet), so it is a manual download.

Configs: `paths` (default: image paths only; copying the ~500 GB of JPEGs is wasteful when the
model trains on codes) and `images256` (plus the 256x256 grey PNG, LLM-CXR preprocessing).
Builder kwargs: `codes_dir`, `allow_upscale` (see `common.CxrBuilder`), `reports_dir` (where the
MIMIC-CXR report zip was unpacked: a folder holding `files/pXX/...` or `pXX/...`; default the
manual dir's `files/`).

Fields: id = dicom_id; view = ViewPosition upper-case ("" when blank); study_datetime from
StudyDate + StudyTime (fractional seconds dropped; a missing time gives T000000; a missing or
malformed date gives ""); labels from the CheXpert CSV (1.0/0.0/-1.0/blank -> 1/0/-1/-2; a study
not in the CSV is all -2); details "{}"; image_path `files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg`;
codes looked up by that path relative to `files/`. Splits train/validate/test come from the
split CSV; a dicom_id listed twice is kept once.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from llmcxr_jax.data import reports
from llmcxr_jax.data.labels import NEGATIVE, NOT_MENTIONED, OBSERVATIONS, POSITIVE, UNCERTAIN
from llmcxr_jax.data.tfds import common
from llmcxr_jax.errors import MissingInputError

METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv.gz"
SPLIT_CSV = "mimic-cxr-2.0.0-split.csv.gz"
CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv.gz"
_LABEL_VALUES = {1: POSITIVE, 0: NEGATIVE, -1: UNCERTAIN}


def _norm_id(value: str | None) -> str:
    """CSV ids as text without a float suffix ("10000032.0" -> "10000032")."""
    v = (value or "").strip()
    return v[:-2] if v.endswith(".0") and v[:-2].isdigit() else v


def study_datetime(date: str | None, time: str | None) -> str:
    """MIMIC StudyDate ("21800506") + StudyTime ("103015.234", "85042") -> "21800506T103015"."""
    try:
        d = int(float((date or "").strip()))
    except ValueError:
        return ""
    day = f"{d:08d}"
    if len(day) != 8 or not 1 <= int(day[4:6]) <= 12 or not 1 <= int(day[6:]) <= 31:
        return ""
    try:
        t = f"{int(float((time or '').strip())):06d}"
    except (ValueError, OverflowError):
        t = "000000"
    if len(t) != 6 or int(t[:2]) > 23 or int(t[2:4]) > 59 or int(t[4:]) > 60:
        t = "000000"
    return f"{day}T{t}"


def _open_csv(root: Path, name: str) -> Iterator[dict[str, str]]:
    path = root / name
    if not path.is_file() and (root / name.removesuffix(".gz")).is_file():
        path = root / name.removesuffix(".gz")  # already decompressed
    if not path.is_file():
        raise MissingInputError(
            f"{root / name}: not found ({MimicCxrJpg.MANUAL_DOWNLOAD_INSTRUCTIONS})"
        )
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115
    with raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as text:
        yield from csv.DictReader(text)


def read_labels(root: Path) -> dict[tuple[str, str], np.ndarray]:
    """(subject_id, study_id) -> int8[14] from the CheXpert CSV."""
    out: dict[tuple[str, str], np.ndarray] = {}
    for row in _open_csv(root, CHEXPERT_CSV):
        labels = common.empty_labels()
        for k, obs in enumerate(OBSERVATIONS):
            v = (row.get(obs) or "").strip()
            if v:
                with contextlib.suppress(ValueError):
                    labels[k] = _LABEL_VALUES.get(int(float(v)), NOT_MENTIONED)
        out[_norm_id(row.get("subject_id")), _norm_id(row.get("study_id"))] = labels
    return out


class MimicCxrJpg(common.CxrBuilder):
    """MIMIC-CXR-JPG images + MIMIC-CXR reports, one record per image."""

    BUILDER_CONFIGS = [
        common.CxrConfig(name="paths", description="Image paths only (no pixels)."),
        common.CxrConfig(name="images256", resolution=256, description="With 256x256 PNGs."),
    ]
    DEFAULT_CONFIG_NAME = "paths"
    DESCRIPTION = "MIMIC-CXR-JPG with MIMIC-CXR report sections, in the LLM-CXR record schema."
    HOMEPAGE = "https://physionet.org/content/mimic-cxr-jpg/"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Credentialed PhysioNet access is required. Put into the manual dir (e.g. a copy of
physionet.org/files/mimic-cxr-jpg/2.x.x/): `files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg`,
`mimic-cxr-2.0.0-metadata.csv.gz`, `mimic-cxr-2.0.0-split.csv.gz`,
`mimic-cxr-2.0.0-chexpert.csv.gz`; and the reports from MIMIC-CXR (mimic-cxr-reports.zip) as
`files/pXX/pNNNNNNNN/sNNNNNNNN.txt`, either in the same `files/` or in a folder given as the
`reports_dir` builder kwarg."""

    def __init__(self, *, reports_dir: str | os.PathLike | None = None, **kwargs: Any):
        self.reports_dir = reports_dir
        super().__init__(**kwargs)

    def _reports_root(self, root: Path) -> Path:
        if self.reports_dir is None:
            return root / "files"
        r = Path(self.reports_dir)
        return r / "files" if (r / "files").is_dir() else r

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        root = Path(dl_manager.manual_dir)
        rows: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
        seen: set[str] = set()
        for row in _open_csv(root, SPLIT_CSV):
            dicom = (row.get("dicom_id") or "").strip()
            split = (row.get("split") or "").strip().lower()
            if not dicom or not split or dicom in seen:
                continue
            seen.add(dicom)
            rows[split].append(
                (_norm_id(row.get("subject_id")), _norm_id(row.get("study_id")), dicom)
            )
        meta: dict[str, tuple[str, str]] = {}
        for row in _open_csv(root, METADATA_CSV):
            view = (row.get("ViewPosition") or "").strip().upper()
            when = study_datetime(row.get("StudyDate"), row.get("StudyTime"))
            meta[(row.get("dicom_id") or "").strip()] = (view, when)
        labels = read_labels(root)
        codes = self._load_codes()
        splits = [s for s in self.SPLITS if s in rows] + sorted(set(rows) - set(self.SPLITS))
        skips = self._start_skips(splits)
        reports_root = self._reports_root(root)
        return self._non_empty(
            {
                s: self._generate_examples(
                    split=s,
                    root=root,
                    reports_root=reports_root,
                    rows=rows[s],
                    meta=meta,
                    labels=labels,
                    codes=codes,
                    skips=skips,
                )
                for s in splits
            }
        )

    def _read_report(
        self, path: Path, split: str, skips: common.SkipLog, n_images: int
    ) -> dict[str, str] | None:
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except FileNotFoundError:
            skips.skip(split, "missing_report", str(path), n=n_images)
            return None
        except (OSError, UnicodeDecodeError) as e:
            skips.skip(split, "unreadable_report", str(path), f"{type(e).__name__}: {e}", n_images)
            return None
        sections = reports.extract_sections(text)
        if not sections["findings"] and not sections["impression"]:
            skips.skip(split, "empty_report", str(path), "no FINDINGS and no IMPRESSION", n_images)
            return None
        return {
            "findings": sections["findings"],
            "impression": sections["impression"],
            "report": reports.clean_report(text),
        }

    def _generate_examples(
        self,
        *,
        split: str,
        root: Path,
        reports_root: Path,
        rows: list[tuple[str, str, str]],
        meta: dict[str, tuple[str, str]],
        labels: dict[tuple[str, str], np.ndarray],
        codes: common.Codes | None,
        skips: common.SkipLog,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        from llmcxr_jax.data.images import ImageError

        by_study: dict[tuple[str, str], list[str]] = defaultdict(list)
        for subject, study, dicom in rows:
            by_study[subject, study].append(dicom)
        for (subject, study), dicoms in sorted(by_study.items()):
            study_dir = Path(f"p{subject[:2]}") / f"p{subject}"
            report = self._read_report(
                reports_root / study_dir / f"s{study}.txt", split, skips, len(dicoms)
            )
            if report is None:
                continue
            study_labels = labels.get((subject, study))
            for dicom in sorted(dicoms):
                code_id = (study_dir / f"s{study}" / f"{dicom}.jpg").as_posix()
                image_path = f"files/{code_id}"
                full = root / image_path
                if not full.is_file():
                    skips.skip(split, "missing_image", str(full))
                    continue
                rec_codes = None
                if codes is not None:
                    rec_codes, reason = codes.lookup(code_id)
                    if reason:
                        skips.skip(split, reason, code_id)
                        continue
                view, when = meta.get(dicom, ("", ""))
                extra: dict[str, Any] = {}
                if self.resolution is not None:
                    try:
                        extra["image"] = common.cxr_png(
                            full, self.resolution, allow_upscale=self.allow_upscale, name=str(full)
                        )
                    except (ImageError, OSError) as e:
                        skips.skip(split, "unreadable_image", str(full), str(e))
                        continue
                yield (
                    dicom,
                    common.make_record(
                        id=dicom,
                        subject_id=subject,
                        study_id=study,
                        view=view,
                        study_datetime=when,
                        labels=study_labels,
                        label_source="chexpert",
                        details="{}",
                        image_path=image_path,
                        codes=rec_codes,
                        **report,
                        **extra,
                    ),
                )
