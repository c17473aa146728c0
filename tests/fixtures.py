"""Tiny fake data trees for the report and TFDS builder tests (made at test time, no binaries).

- `make_mimic_tree`: MIMIC-CXR-JPG layout (three gzipped CSVs, `files/pXX/pN/sN/<dicom>.jpg`,
  MIMIC-CXR report .txt files) with one study without a report, one non-UTF-8 report, one
  report with neither FINDINGS nor IMPRESSION, one unreadable image and one image missing from
  disk. `MIMIC_EXPECTED` says what each split keeps and skips.
- `make_openi_archives`: `NLMCXR_reports.tgz` (NLMCXR XML reports, one malformed, one without
  sections, one without images) and `NLMCXR_png.tgz` (one image missing, one not a PNG).
- `write_codes_dir`: an `encode-images` output written by hand in its format (manifest +
  array_record shards of JSON records).
- `MIMIC_REPORTS`: realistic MIMIC-style report texts, also used by the section tests.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

NUM_CODES, N_EMBED = 16, 32  # a tiny "VQ-GAN": 16 codes per image, codebook of 32

# --- report texts (MIMIC-CXR style: leading spaces, centred title, ___ placeholders) --------


def _mimic_style(text: str) -> str:
    """MIMIC's whitespace: blank lines hold one space, headers alone on a line end in a space."""
    text = re.sub(r"\n(?=\n)", "\n ", text)
    return re.sub(r":\n", ": \n", text)


_RAW_REPORTS = {
    "classic": """\
                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows. The
 cardiomediastinal silhouette is normal.  Clips project over the left lung,
 potentially within the breast. The imaged upper abdomen is unremarkable.
 Chronic deformity of the posterior left sixth and seventh ribs are noted.

 IMPRESSION:

 No acute cardiopulmonary process.
""",
    "impression_only": """\
                                 FINAL REPORT
 HISTORY:  ___-year-old female with shortness of breath.

 COMPARISON:  Chest radiograph from ___.

 IMPRESSION:

 Portable AP upright chest radiograph demonstrates low lung volumes.  No
 focal consolidation.  Mild cardiomegaly is unchanged.
""",
    "wet_read_combined": """\
 WET READ: ___ ___ ___ 3:37 PM
  No pneumothorax.
 ______________________________________________________________________________
                                 FINAL REPORT
 INDICATION:  Chest pain.

 FINDINGS AND IMPRESSION:  Heart size is normal.  Lungs are clear.  No pleural
 effusion or pneumothorax.
""",
    "findings_only": """\
                                 FINAL REPORT
 EXAMINATION:  CHEST (PORTABLE AP)

 INDICATION:  ___M s/p CABG.  Eval for effusion.

 FINDINGS:  Sternotomy wires are intact.  Small left pleural effusion with
 adjacent atelectasis.
""",
    "no_sections": """\
                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough

 PA AND LATERAL VIEWS OF THE CHEST:  The lungs are clear.  The heart is normal
 in size.
""",
    "inline_titlecase": """\
                                 FINAL REPORT
 EXAMINATION: CHEST PA/LAT. COMPARISON: None. Findings: The heart is mildly enlarged.
 There is mild pulmonary vascular congestion.  Impression: Mild cardiomegaly and
 vascular congestion.

 NOTIFICATION:  The findings were discussed with Dr. _____ by Dr. ___ on the
 telephone on ___ at 10:15 AM .
""",
    "variants": """\
                                 FINAL REPORT
 REASON FOR EXAMINATION:  Evaluation of the patient with fever.  Overall impression: unwell.

 FINDINGS

 Right lower lobe opacity.  Otherwise the overall impression: clear lungs.

 IMPRESSIONS :  Right lower lobe pneumonia.

 RECOMMENDATION(S):  Follow-up radiograph in 6 weeks.

 CONCLUSION:  Pneumonia, as above.
""",
}
MIMIC_REPORTS = {k: _mimic_style(v) for k, v in _RAW_REPORTS.items()}

# --- MIMIC-CXR-JPG -----------------------------------------------------------------------------

CHEXPERT_COLUMNS = (  # alphabetical, as in the real CSV (not the OBSERVATIONS order)
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)

# dicom_id, subject, study, view, StudyDate, StudyTime, split
MIMIC_IMAGES = (
    (
        "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014",
        "10000032",
        "50414267",
        "PA",
        "21800506",
        "213014.531",
        "train",
    ),
    (
        "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962",
        "10000032",
        "50414267",
        "LATERAL",
        "21800506",
        "213014.531",
        "train",
    ),
    (
        "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab",
        "10000032",
        "53189527",
        "AP",
        "21800626",
        "165020.0",
        "train",
    ),
    (
        "68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714",
        "10000764",
        "57375967",
        "PA",
        "21320923",
        "85042",
        "validate",
    ),
    (
        "096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4",
        "10000764",
        "57375967",
        "LATERAL",
        "21320923",
        "85042",
        "validate",
    ),
    (
        "1a1fe7e3-cbac5d93-b339aeda-86bb86b5-4f31e82e",
        "10000764",
        "57375967",
        "LL",
        "21320923",
        "85042",
        "validate",
    ),
    (
        "3c3bd2c0-2e7e4f0d-b5a7f8a0-7b24ab5e-27cb5f59",
        "10000898",
        "50771383",
        "PA",
        "21850110",
        "",
        "train",
    ),
    (
        "4f8b0e41-b3e0e4a9-6a8c9f6e-0c1c5e2b-9d8f7a6e",
        "10000898",
        "54205396",
        "AP",
        "21860315",
        "101500",
        "test",
    ),
    (
        "5a7d3c2b-1e0f9a8b-7c6d5e4f-3a2b1c0d-9e8f7a6b",
        "10000898",
        "58000001",
        "AP",
        "21860401",
        "080000",
        "test",
    ),
    (
        "6b8e4d3c-2f1a0b9c-8d7e6f5a-4b3c2d1e-0f9a8b7c",
        "10000898",
        "58000002",
        "PA",
        "21860402",
        "080000",
        "test",
    ),
    ("7c9f5e4d-3a2b1c0d-9e8f7a6b-5c4d3e2f-1a0b9c8d", "10000898", "58000003", "PA", "", "", "test"),  # noqa: E501
)
D = [row[0] for row in MIMIC_IMAGES]
MIMIC_REPORT_OF_STUDY = {
    "50414267": "classic",
    "53189527": "impression_only",
    "57375967": "wet_read_combined",
    # 50771383: no report file
    "54205396": "findings_only",
    "58000001": None,  # not UTF-8
    "58000002": "no_sections",
    "58000003": "inline_titlecase",
}
MIMIC_MISSING_IMAGE = D[4]  # listed in the CSVs, not on disk
MIMIC_BAD_IMAGE = D[7]  # not a JPEG
# study -> {observation: CSV value}
MIMIC_CHEXPERT = {
    ("10000032", "50414267"): {"No Finding": "1.0"},
    ("10000032", "53189527"): {"Cardiomegaly": "1.0", "Edema": "-1.0", "Pneumonia": "0.0"},
    ("10000764", "57375967"): {"No Finding": "1.0", "Pneumothorax": "0.0"},
    ("10000898", "54205396"): {"Pleural Effusion": "1.0", "Support Devices": "1.0"},
    # 58000003 is not in the CheXpert CSV: all -2
}
# what the builder keeps / skips per split (no codes; paths config)
MIMIC_EXPECTED = {
    "train": {"keep": {D[0], D[1], D[2]}, "skips": {"missing_report": 1}},
    "validate": {"keep": {D[3], D[5]}, "skips": {"missing_image": 1}},
    "test": {
        "keep": {D[7], D[10]},
        "skips": {"unreadable_report": 1, "empty_report": 1},
    },
}
# codes: D[2] wrong length, D[3] a code >= N_EMBED, D[10] none; the rest valid
MIMIC_CODES_BAD = {"invalid_codes": {D[2], D[3]}, "missing_codes": {D[10]}}


def mimic_code_id(dicom: str) -> str:
    _, subject, study, *_ = next(r for r in MIMIC_IMAGES if r[0] == dicom)
    return f"p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"


def codes_for(key: str) -> list[int]:
    """Deterministic valid codes for an id."""
    rng = np.random.default_rng(sum(key.encode()))
    return rng.integers(0, N_EMBED, NUM_CODES).tolist()


def _jpeg(path: Path, size: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    w, h = size
    grad = np.linspace(30, 220, w)[None, :] + rng.normal(0, 10, (h, w))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(grad, 0, 255).astype(np.uint8), "L").save(path, format="JPEG")


def _csv_gz(path: Path, header: list[str], rows: list[list[str]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    path.write_bytes(gzip.compress(buf.getvalue().encode()))


def make_mimic_tree(
    root: Path, *, reports_dir: Path | None = None, image_size: tuple[int, int] = (40, 48)
) -> Path:
    """Write the fake MIMIC tree under `root` (reports under `reports_dir/files` if given)."""
    root.mkdir(parents=True, exist_ok=True)
    reports_root = (reports_dir or root) / "files"
    meta_header = [
        "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription",
        "ViewPosition", "Rows", "Columns", "StudyDate", "StudyTime",
        "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
        "PatientOrientationCodeSequence_CodeMeaning",
    ]  # fmt: skip
    meta_rows, split_rows = [], []
    for k, (dicom, subject, study, view, date, time, split) in enumerate(MIMIC_IMAGES):
        meta_rows.append(
            [dicom, subject, study, "CHEST (PA AND LAT)", view, str(image_size[1]),
             str(image_size[0]), date, time, "CHEST (PA AND LAT)", "postero-anterior", "Erect"]
        )  # fmt: skip
        split_rows.append([dicom, study, subject, split])
        jpg = root / "files" / mimic_code_id(dicom)
        if dicom == MIMIC_MISSING_IMAGE:
            continue
        if dicom == MIMIC_BAD_IMAGE:
            jpg.parent.mkdir(parents=True, exist_ok=True)
            jpg.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
            continue
        _jpeg(jpg, image_size, k)
    split_rows.append(list(split_rows[0]))  # a duplicated row is kept once
    _csv_gz(root / "mimic-cxr-2.0.0-metadata.csv.gz", meta_header, meta_rows)
    _csv_gz(
        root / "mimic-cxr-2.0.0-split.csv.gz",
        ["dicom_id", "study_id", "subject_id", "split"],
        split_rows,
    )
    chex_rows = [
        [subject, study] + [values.get(c, "") for c in CHEXPERT_COLUMNS]
        for (subject, study), values in MIMIC_CHEXPERT.items()
    ]
    _csv_gz(
        root / "mimic-cxr-2.0.0-chexpert.csv.gz",
        ["subject_id", "study_id", *CHEXPERT_COLUMNS],
        chex_rows,
    )
    subjects = {study: subject for _, subject, study, *_ in MIMIC_IMAGES}
    for study, key in MIMIC_REPORT_OF_STUDY.items():
        subject = subjects[study]
        txt = reports_root / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
        txt.parent.mkdir(parents=True, exist_ok=True)
        if key is None:
            latin = "FINDINGS:  Caf\u00e9 au lait.\n IMPRESSION:  Normal.\n"
            txt.write_bytes(latin.encode("cp1252"))
        else:
            txt.write_text(MIMIC_REPORTS[key])
    return root


# --- Open-i --------------------------------------------------------------------------------------

_OPENI_TEMPLATE = """\
<?xml version="1.0" encoding="utf-8"?>
<eCitation>
   <meta type="rr"/>
   <uId id="CXR{n}"/>
   <pmcId id="{n}"/>
   <docSource>CXR</docSource>
   <IUXRId id="{n}"/>
   <licenseType>open-access</licenseType>
   <licenseURL>http://creativecommons.org/licenses/by-nc-nd/4.0/</licenseURL>
   <ccLicense>byncnd</ccLicense>
   <articleDate>2013-08-01</articleDate>
   <articleType>XR</articleType>
   <publisher>Indiana University</publisher>
   <title>Indiana University Chest X-ray Collection</title>
   <MedlineCitation Owner="Indiana University" Status="supplied by publisher">
      <Article PubModel="Electronic">
         <ArticleTitle>Indiana University Chest X-ray Collection</ArticleTitle>
         <Abstract>
{abstract}
         </Abstract>
         <Affiliation>Indiana University School of Medicine</Affiliation>
      </Article>
   </MedlineCitation>
   <MeSH>
{mesh}
   </MeSH>
{images}
</eCitation>
"""


def _openi_xml(n: int, sections: dict[str, str], mesh: list[str], images: list[tuple[str, str]]):
    abstract = "\n".join(
        f'            <AbstractText Label="{label}">{text}</AbstractText>'
        for label, text in sections.items()
    )
    mesh_xml = "\n".join(f"      <major>{m}</major>" for m in mesh)
    images_xml = "\n".join(
        f'   <parentImage id="{i}">\n      <figureId>F{k + 1}</figureId>\n'
        f'      <caption>{caption}</caption>\n      <panel type="single">\n'
        f"         <url>/hadoop/storage/radiology/extract/{i}.jpg</url>\n"
        f"      </panel>\n   </parentImage>"
        for k, (i, caption) in enumerate(images)
    )
    return _OPENI_TEMPLATE.format(n=n, abstract=abstract, mesh=mesh_xml, images=images_xml)


# report file stem -> split (by common hash): 1, 2, 3, 4, 6 train; 5 validate; 8 test
OPENI_REPORTS = {
    1: (
        {
            "COMPARISON": "None.",
            "INDICATION": "Positive TB test",
            "FINDINGS": "The cardiac silhouette and mediastinum size are within normal limits. "
            "There is no pulmonary edema. There is no focal consolidation. There are no XXXX of "
            "a pleural effusion. There is no evidence of pneumothorax.",
            "IMPRESSION": "Normal chest x-XXXX.",
        },
        ["normal"],
        [
            ("CXR1_1_IM-0001-3001", "Xray Chest PA and Lateral"),
            ("CXR1_1_IM-0001-4001", "Xray Chest PA and Lateral"),
        ],
    ),  # fmt: skip
    2: (
        {
            "COMPARISON": "Chest radiographs XXXX.",
            "INDICATION": "XXXX-year-old male, chest pain.",
            "FINDINGS": "",
            "IMPRESSION": "Borderline cardiomegaly. Small right pleural effusion.",
        },
        ["Cardiomegaly/borderline", "Pleural Effusion/right/small"],
        [("CXR2_IM-0652-1001", "PA chest")],
    ),
    4: (
        {"INDICATION": "Dyspnea.", "FINDINGS": "", "IMPRESSION": ""},
        ["normal"],
        [("CXR4_IM-2050-1001", "Xray Chest PA and Lateral")],
    ),  # fmt: skip
    5: (
        {"FINDINGS": "Lungs are clear. No pneumothorax or pleural effusion."},
        ["normal"],
        [("CXR5_IM-2117-1003002", "Chest, 2 views"), ("CXR5_IM-2117-1004003", "Chest, 2 views")],
    ),
    6: ({"FINDINGS": "Heart size normal.", "IMPRESSION": "No acute disease."}, ["normal"], []),
    8: (
        {
            "FINDINGS": "Stable cardiomegaly. Left lower lobe airspace disease.",
            "IMPRESSION": "Left lower lobe pneumonia.",
        },
        ["Pneumonia/lung/base/left", "Cardiomegaly"],
        [
            ("CXR8_IM-2333-1001", "Xray Chest PA and Lateral"),
            ("CXR8_IM-2333-2001", "Xray Chest PA and Lateral"),
        ],
    ),  # fmt: skip
}
OPENI_MALFORMED = 3  # 3.xml is cut off in the middle
OPENI_MISSING_PNG = "CXR5_IM-2117-1004003"  # listed, not in the PNG archive
OPENI_BAD_PNG = "CXR1_1_IM-0001-4001"  # in the archive, not a PNG
OPENI_EXPECTED = {  # paths config with the PNG archive, no codes
    "train": {
        "keep": {"CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001", "CXR2_IM-0652-1001"},
        "skips": {"unreadable_report": 1, "empty_report": 1, "missing_image": 1},
    },
    "validate": {"keep": {"CXR5_IM-2117-1003002"}, "skips": {"missing_image": 1}},
    "test": {"keep": {"CXR8_IM-2333-1001", "CXR8_IM-2333-2001"}, "skips": {}},
}
# codes: CXR2 wrong length, CXR8 ...2001 out of range, CXR1 ...3001 none
OPENI_CODES_BAD = {
    "invalid_codes": {"CXR2_IM-0652-1001.png", "CXR8_IM-2333-2001.png"},
    "missing_codes": {"CXR1_1_IM-0001-3001.png"},
}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def _png(size: tuple[int, int], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "L").save(buf, format="PNG")
    return buf.getvalue()


def make_openi_archives(root: Path, *, pngs: bool = True, image_size=(40, 48)) -> Path:
    """Write NLMCXR_reports.tgz (and NLMCXR_png.tgz) into `root`."""
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / "NLMCXR_reports.tgz", "w:gz") as tar:
        folder = tarfile.TarInfo("ecgen-radiology")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)  # directories are skipped
        for n, (sections, mesh, images) in sorted(OPENI_REPORTS.items()):
            _add(tar, f"ecgen-radiology/{n}.xml", _openi_xml(n, sections, mesh, images).encode())
        broken = _openi_xml(OPENI_MALFORMED, {"FINDINGS": "Clear."}, ["normal"], [("CXR3_X", "")])
        _add(tar, f"ecgen-radiology/{OPENI_MALFORMED}.xml", broken.encode()[:700])
    if pngs:
        with tarfile.open(root / "NLMCXR_png.tgz", "w:gz") as tar:
            k = 0
            for _, _, images in OPENI_REPORTS.values():
                for image_id, _ in images:
                    k += 1
                    if image_id == OPENI_MISSING_PNG:
                        continue
                    data = b"not a png" if image_id == OPENI_BAD_PNG else _png(image_size, k)
                    _add(tar, f"{image_id}.png", data)
    return root


# --- codes ---------------------------------------------------------------------------------------


def write_codes_dir(
    out: Path, entries: dict[str, list[int]], *, shard_size: int = 4, num_codes: int = NUM_CODES
) -> Path:
    """An encode-images output (data/codes.py format) holding `entries` (id -> codes)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    from llmcxr_jax.data import codes as codes_store

    out.mkdir(parents=True, exist_ok=True)
    items = list(entries.items())
    n = len(items)
    num_shards = max(1, -(-n // shard_size))
    manifest = {
        "num_records": n,
        "shard_size": shard_size,
        "num_shards": num_shards,
        "num_codes": num_codes,
        "n_embed": N_EMBED,
    }
    (out / codes_store.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    for s in range(num_shards):
        writer = ArrayRecordWriter(str(out / codes_store.shard_name(s, num_shards)), "group_size:1")
        for cid, codes in items[s * shard_size : (s + 1) * shard_size]:
            writer.write(json.dumps({"id": cid, "codes": list(codes)}).encode())
        writer.close()
    return out


def codes_with_defects(ids: list[str], bad: dict[str, set[str]]) -> dict[str, list[int]]:
    """Valid codes for `ids`, except: invalid ones alternate wrong length / out of range, and
    missing ones are left out."""
    entries: dict[str, list[int]] = {}
    invalid = sorted(bad.get("invalid_codes", ()))
    for cid in ids:
        if cid in bad.get("missing_codes", ()):
            continue
        codes = codes_for(cid)
        if cid in invalid:
            codes = codes[:-1] if invalid.index(cid) % 2 == 0 else codes[:-1] + [N_EMBED]
        entries[cid] = codes
    return entries


def write_dicom(path: Path, pixels: np.ndarray | None, *, cut: bool = False) -> Path:
    """An 8-bit MONOCHROME2 secondary-capture DICOM of `pixels` (None: one without Pixel Data,
    64x64 in its header); `cut` drops its last 2000 bytes (a truncated file)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    fm.MediaStorageSOPInstanceUID = generate_uid()
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID, ds.SOPInstanceUID = fm.MediaStorageSOPClassUID, fm.MediaStorageSOPInstanceUID
    rows, cols = (64, 64) if pixels is None else pixels.shape
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "CR", rows, cols, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    if pixels is not None:
        ds.PixelData = np.ascontiguousarray(pixels, np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    if cut:
        path.write_bytes(path.read_bytes()[:-2000])
    return path
