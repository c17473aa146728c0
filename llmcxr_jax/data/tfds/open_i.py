"""Open-i (Indiana University chest X-rays) as a TFDS builder of the shared schema.

Why: Open-i is the public, non-credentialed CXR report set: small enough to try the whole
LLM-CXR pipeline end to end and to evaluate on. Its licence (CC BY-NC-ND 4.0) forbids shipping
derived copies, so nothing is bundled: the user supplies the archives (manual download) and the
prepared data stays on their machine.

Input (manual dir): `NLMCXR_reports.tgz` (XML reports: `<AbstractText Label="FINDINGS">`,
`Label="IMPRESSION"`, MeSH `<major>` terms, one `<parentImage id="...">` per image) and, optional
for the `paths` config and required for `images256`, `NLMCXR_png.tgz` (`<parentImage id>.png`).
Both archives are read member by member with `tarfile` in stream mode; nothing is extracted.
XML is parsed with the standard library (expat >= 2.4 refuses entity-expansion bombs; external
entities are never fetched).

Choices:
- One record per image; id = the parentImage id; subject_id = study_id = the report id (the
  XML's `uId`, e.g. "CXR1"; the file name stem when absent): Open-i has no patient ids.
- Split (there is no official one): by a SHA-256 hash of the report file name stem ("1" for
  `ecgen-radiology/1.xml`), 80% train / 10% validate / 10% test; all images of a report are in
  one split, and a malformed report is counted in the split it would have had.
- view: Open-i captions describe the study ("Xray Chest PA and Lateral"), not the image, so the
  view is "" unless the report has exactly one image whose caption names exactly one of PA, AP,
  lateral. study_datetime is "" (the XML dates are the collection's publication date).
- labels: our CheXpert-style labeler (data/labeler.py) on the IMPRESSION, or on the FINDINGS
  when there is no impression (MIMIC-CXR's labelling rule); label_source "mesh+labeler";
  details `{"mesh": [MeSH major terms]}`. De-identification placeholders ("XXXX") are kept.
- report: the labelled AbstractText sections in XML order, "LABEL: text" per line.
- image_path: the PNG's archive member name (`<id>.png` when no PNG archive was given, and then
  images cannot be checked for presence); codes are looked up by the PNG's file name
  (`CXR1_1_IM-0001-3001.png`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from llmcxr_jax.data import reports
from llmcxr_jax.data.tfds import common
from llmcxr_jax.errors import MissingInputError

REPORTS_ARCHIVE = "NLMCXR_reports.tgz"
PNG_ARCHIVE = "NLMCXR_png.tgz"
SPLIT_PERCENT = (("train", 80), ("validate", 10), ("test", 10))
_VIEW_WORDS = (("PA", re.compile(r"\bPA\b")), ("AP", re.compile(r"\bAP\b")))
_LATERAL = re.compile(r"\blat(?:eral)?\b", re.IGNORECASE)


def split_of(report_key: str) -> str:
    """Deterministic split of a report: SHA-256 of its file name stem, 80/10/10."""
    h = int.from_bytes(hashlib.sha256(report_key.encode("utf-8")).digest()[:8], "big") % 100
    edge = 0
    for split, percent in SPLIT_PERCENT:
        edge += percent
        if h < edge:
            return split
    return SPLIT_PERCENT[-1][0]


def caption_view(caption: str) -> str:
    """The one view a caption names (PA, AP, LATERAL), or "" when none or several."""
    views = {v for v, rx in _VIEW_WORDS if rx.search(caption)}
    if _LATERAL.search(caption):
        views.add("LATERAL")
    return views.pop() if len(views) == 1 else ""


@dataclasses.dataclass
class OpenIReport:
    member: str  # archive member name of the XML
    key: str  # file name stem: split key
    report_id: str = ""
    findings: str = ""
    impression: str = ""
    report: str = ""
    mesh: list[str] = dataclasses.field(default_factory=list)
    images: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (id, caption)
    error: str = ""


def _text(el: ET.Element | None) -> str:
    return "".join(el.itertext()) if el is not None else ""


def parse_report(data: bytes, member: str) -> OpenIReport:
    """One NLMCXR XML report; a malformed one comes back with `error` set."""
    key = posixpath.splitext(posixpath.basename(member))[0]
    rep = OpenIReport(member=member, key=key)
    try:
        root = ET.fromstring(data)
    except (ET.ParseError, ValueError) as e:
        rep.error = f"malformed XML ({e})"
        return rep
    uid = root.find(".//uId")
    rep.report_id = ((uid.get("id") if uid is not None else "") or key).strip()
    lines = []
    for el in root.iter("AbstractText"):
        label = (el.get("Label") or "").strip().upper()
        text = reports.clean_text(_text(el))
        if label == "FINDINGS":
            rep.findings = " ".join(filter(None, (rep.findings, text)))
        elif label == "IMPRESSION":
            rep.impression = " ".join(filter(None, (rep.impression, text)))
        if text:
            lines.append(f"{label}: {text}" if label else text)
    rep.report = "\n".join(lines)
    rep.mesh = [t for t in (reports.clean_text(_text(m)) for m in root.iter("major")) if t]
    for img in root.iter("parentImage"):
        image_id = (img.get("id") or "").strip()
        if image_id:
            rep.images.append((image_id, reports.clean_text(_text(img.find("caption")))))
    return rep


def _iter_members(path: Path, suffix: str) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    with tarfile.open(path, mode="r|*") as tar:
        for member in tar:
            if member.isfile() and member.name.lower().endswith(suffix):
                yield tar, member


def read_reports(path: Path) -> list[OpenIReport]:
    out = []
    for tar, member in _iter_members(path, ".xml"):
        f = tar.extractfile(member)
        data = f.read() if f is not None else b""
        out.append(parse_report(data, member.name))
    return out


def list_pngs(path: Path) -> dict[str, str]:
    """PNG file name -> archive member name."""
    return {posixpath.basename(m.name): m.name for _, m in _iter_members(path, ".png")}


class OpenI(common.CxrBuilder):
    """Open-i chest X-ray reports (and images), one record per image."""

    BUILDER_CONFIGS = [
        common.CxrConfig(name="paths", description="Image member names only (no pixels)."),
        common.CxrConfig(name="images256", resolution=256, description="With 256x256 PNGs."),
    ]
    DEFAULT_CONFIG_NAME = "paths"
    DESCRIPTION = "Open-i / Indiana University chest X-rays in the LLM-CXR record schema."
    HOMEPAGE = "https://openi.nlm.nih.gov/faq#collection"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download from https://openi.nlm.nih.gov/faq#collection (licence CC BY-NC-ND 4.0: do not
redistribute) and put into the manual dir: `{REPORTS_ARCHIVE}` (required) and `{PNG_ARCHIVE}`
(required for the images256 config; with the paths config it lets images be checked)."""

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        root = Path(dl_manager.manual_dir)
        reports_tgz, png_tgz = root / REPORTS_ARCHIVE, root / PNG_ARCHIVE
        if not reports_tgz.is_file():
            raise MissingInputError(
                f"{reports_tgz}: not found. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        if self.resolution is not None and not png_tgz.is_file():
            raise MissingInputError(f"{png_tgz}: needed by the {self.builder_config.name} config")
        pngs = list_pngs(png_tgz) if png_tgz.is_file() else None
        by_split: dict[str, list[OpenIReport]] = {s: [] for s, _ in SPLIT_PERCENT}
        for rep in read_reports(reports_tgz):
            by_split[split_of(rep.key)].append(rep)
        codes = self._load_codes()
        skips = self._start_skips(list(by_split))
        return self._non_empty(
            {
                s: self._generate_examples(
                    split=s, reps=reps, pngs=pngs, png_tgz=png_tgz, codes=codes, skips=skips
                )
                for s, reps in by_split.items()
            }
        )

    def _generate_examples(
        self,
        *,
        split: str,
        reps: list[OpenIReport],
        pngs: dict[str, str] | None,
        png_tgz: Path,
        codes: common.Codes | None,
        skips: common.SkipLog,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        from llmcxr_jax.data import labeler

        wanted: dict[str, tuple[str, dict[str, Any]]] = {}  # png name -> (id, record)
        for rep in sorted(reps, key=lambda r: r.member):
            if rep.error:
                skips.skip(split, "unreadable_report", rep.member, rep.error)
                continue
            if not rep.images:
                skips.skip(split, "missing_image", rep.member, "the report lists no image")
                continue
            if not rep.findings and not rep.impression:
                skips.skip(
                    split,
                    "empty_report",
                    rep.member,
                    "no FINDINGS and no IMPRESSION",
                    n=len(rep.images),
                )
                continue
            labels = np.asarray(labeler.label_report(rep.impression or rep.findings), np.int8)
            single_view = caption_view(rep.images[0][1]) if len(rep.images) == 1 else ""
            details = json.dumps({"mesh": rep.mesh})
            for image_id, _ in rep.images:
                png = f"{image_id}.png"
                if png in wanted:
                    continue  # the same image listed twice: keep the first
                if pngs is not None and png not in pngs:
                    skips.skip(split, "missing_image", png, f"listed in {rep.member}")
                    continue
                rec_codes = None
                if codes is not None:
                    rec_codes, reason = codes.lookup(png)
                    if reason:
                        skips.skip(split, reason, png)
                        continue
                record = common.make_record(
                    id=image_id,
                    subject_id=rep.report_id,
                    study_id=rep.report_id,
                    view=single_view,
                    study_datetime="",
                    findings=rep.findings,
                    impression=rep.impression,
                    report=rep.report,
                    labels=labels,
                    label_source="mesh+labeler",
                    details=details,
                    image_path=pngs[png] if pngs is not None else png,
                    codes=rec_codes,
                )
                wanted[png] = (image_id, record)
        if self.resolution is None:
            yield from wanted.values()
            return
        yield from self._with_images(split, wanted, png_tgz, skips)

    def _with_images(
        self,
        split: str,
        wanted: dict[str, tuple[str, dict[str, Any]]],
        png_tgz: Path,
        skips: common.SkipLog,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """One streaming pass over the PNG archive for this split's images."""
        from llmcxr_jax.data.images import ImageError

        assert self.resolution is not None
        for tar, member in _iter_members(png_tgz, ".png"):
            png = posixpath.basename(member.name)
            if png not in wanted:
                continue
            image_id, record = wanted.pop(png)
            name = f"{png_tgz.name}:{member.name}"
            try:
                f = tar.extractfile(member)
                data = f.read() if f is not None else b""
                record["image"] = common.cxr_png(
                    data, self.resolution, allow_upscale=self.allow_upscale, name=name
                )
            except (ImageError, OSError, tarfile.TarError) as e:
                skips.skip(split, "unreadable_image", name, str(e))
                continue
            yield image_id, record
        for png in wanted:  # listed before, gone now (archive changed while preparing)
            skips.skip(split, "missing_image", png, f"not in {png_tgz.name}")
