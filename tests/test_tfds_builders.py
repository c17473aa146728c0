"""The TFDS builders prepare from tiny fake trees and read back through `as_data_source`."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import fixtures as fx
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from llmcxr_jax.data import reports
from llmcxr_jax.data.labels import NOT_MENTIONED, NUM_OBSERVATIONS, OBSERVATIONS
from llmcxr_jax.data.tfds import common, cxr_phantoms, mimic_cxr_jpg, open_i

TEXT = common.TEXT_FIELDS


def _prepare(builder: tfds.core.DatasetBuilder, manual_dir: Path | None = None) -> None:
    config = tfds.download.DownloadConfig(manual_dir=str(manual_dir) if manual_dir else None)
    builder.download_and_prepare(download_config=config)


def _read(builder: tfds.core.DatasetBuilder) -> dict[str, dict[str, dict]]:
    """{split: {id: record with text decoded}}."""
    out = {}
    for split in builder.info.splits:
        src = builder.as_data_source(split)
        recs = {}
        for k in range(len(src)):
            r = dict(src[k])
            for f in TEXT:
                assert isinstance(r[f], bytes), f
                r[f] = r[f].decode()
            recs[r["id"]] = r
        out[split] = recs
    return out


def _expected_skips(skips: dict[str, int]) -> dict[str, int]:
    return {r: skips.get(r, 0) for r in common.SKIP_REASONS}


# --- MIMIC-CXR-JPG ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mimic(tmp_path_factory):
    base = tmp_path_factory.mktemp("mimic")
    root = fx.make_mimic_tree(base / "manual", reports_dir=base / "reports")
    return root, base / "reports"


def test_mimic_paths_config(mimic, tmp_path, caplog):
    root, reports_dir = mimic
    b = mimic_cxr_jpg.MimicCxrJpg(data_dir=str(tmp_path), reports_dir=str(reports_dir))
    assert b.builder_config.name == "paths"
    with caplog.at_level(logging.WARNING):
        _prepare(b, root)
    data = _read(b)
    assert set(data) == {"train", "validate", "test"}
    counts = common.skip_counts(b)
    for split, exp in fx.MIMIC_EXPECTED.items():
        assert set(data[split]) == exp["keep"], split
        assert counts[split] == _expected_skips(exp["skips"]), split
    # the bad report file is named in the log
    assert "s58000001.txt" in caplog.text and "unreadable_report" in caplog.text

    d0 = fx.D[0]
    r = data["train"][d0]
    assert r["subject_id"] == "10000032" and r["study_id"] == "50414267"
    assert r["view"] == "PA" and r["study_datetime"] == "21800506T213014"
    sec = reports.extract_sections(fx.MIMIC_REPORTS["classic"])
    assert r["findings"] == sec["findings"] and r["impression"] == sec["impression"]
    assert r["report"] == reports.clean_report(fx.MIMIC_REPORTS["classic"])
    assert r["label_source"] == "chexpert" and json.loads(r["details"]) == {}
    assert r["image_path"] == f"files/p10/p10000032/s50414267/{d0}.jpg"
    assert (root / r["image_path"]).is_file()
    assert r["codes"].dtype == np.int16 and r["codes"].shape == (0,)
    assert "image" not in r
    labels = dict(zip(OBSERVATIONS, r["labels"].tolist(), strict=True))
    assert r["labels"].dtype == np.int8
    assert labels["No Finding"] == 1 and labels["Cardiomegaly"] == -2

    r = data["train"][fx.D[2]]  # impression-only report; time "165020.0"
    assert r["findings"] == "" and r["impression"].startswith("Portable AP upright")
    assert r["view"] == "AP" and r["study_datetime"] == "21800626T165020"
    labels = dict(zip(OBSERVATIONS, r["labels"].tolist(), strict=True))
    assert (labels["Cardiomegaly"], labels["Edema"], labels["Pneumonia"]) == (1, -1, 0)
    assert labels["No Finding"] == -2
    r = data["validate"][fx.D[3]]  # time 85042 -> 085042; FINDINGS AND IMPRESSION
    assert r["study_datetime"] == "21320923T085042"
    assert r["findings"] == "" and r["impression"].startswith("Heart size is normal.")
    assert data["validate"][fx.D[5]]["view"] == "LL"
    r = data["test"][fx.D[10]]  # no date, no CheXpert row
    assert r["study_datetime"] == "" and (r["labels"] == -2).all()
    assert data["test"][fx.D[7]]["impression"] == ""  # findings-only report kept


def test_mimic_codes_and_skips(mimic, tmp_path):
    root, reports_dir = mimic
    ids = [fx.mimic_code_id(d) for d in fx.D]
    bad = {k: {fx.mimic_code_id(d) for d in v} for k, v in fx.MIMIC_CODES_BAD.items()}
    codes_dir = fx.write_codes_dir(tmp_path / "codes", fx.codes_with_defects(ids, bad))
    b = mimic_cxr_jpg.MimicCxrJpg(
        data_dir=str(tmp_path / "data"), reports_dir=str(reports_dir), codes_dir=str(codes_dir)
    )
    _prepare(b, root)
    data = _read(b)
    counts = common.skip_counts(b)
    assert set(data["train"]) == {fx.D[0], fx.D[1]}
    assert set(data["validate"]) == {fx.D[5]}
    assert set(data["test"]) == {fx.D[7]}
    assert counts["train"] == _expected_skips({"missing_report": 1, "invalid_codes": 1})
    assert counts["validate"] == _expected_skips({"missing_image": 1, "invalid_codes": 1})
    assert counts["test"] == _expected_skips(
        {"unreadable_report": 1, "empty_report": 1, "missing_codes": 1}
    )
    r = data["train"][fx.D[0]]
    assert r["codes"].dtype == np.int16
    np.testing.assert_array_equal(r["codes"], fx.codes_for(fx.mimic_code_id(fx.D[0])))
    # reopened by name from the data dir: same counts, same records
    reopened = tfds.builder("mimic_cxr_jpg/paths", data_dir=str(tmp_path / "data"))
    assert common.skip_counts(reopened) == counts
    src = tfds.data_source("mimic_cxr_jpg", data_dir=str(tmp_path / "data"), split="test")
    assert len(src) == 1 and src[0]["id"] == fx.D[7].encode()


def test_mimic_images256_config(tmp_path):
    # reports inside the manual dir's files/ (the default reports location)
    root = fx.make_mimic_tree(tmp_path / "manual")
    b = mimic_cxr_jpg.MimicCxrJpg(
        config="images256", data_dir=str(tmp_path / "data"), allow_upscale=True
    )
    _prepare(b, root)
    data = _read(b)
    counts = common.skip_counts(b)
    assert set(data["test"]) == {fx.D[10]}  # D[7] is not a JPEG
    assert counts["test"]["unreadable_image"] == 1
    assert set(data["train"]) == fx.MIMIC_EXPECTED["train"]["keep"]
    img = data["train"][fx.D[0]]["image"]
    assert img.shape == (256, 256, 1) and img.dtype == np.uint8
    from llmcxr_jax.data import images

    src = root / data["train"][fx.D[0]]["image_path"]
    x = images.preprocess(images.read_image(src), 256, allow_upscale=True)
    np.testing.assert_array_equal(img[..., 0], images.to_uint8(x)[..., 0])


def test_mimic_small_images_are_skipped_without_upscale(tmp_path):
    root = fx.make_mimic_tree(tmp_path / "manual", image_size=(300, 200))
    b = mimic_cxr_jpg.MimicCxrJpg(config="images256", data_dir=str(tmp_path / "data"))
    # 300x200: short side 200 < 256 -> unreadable, counted; with nothing left, a clear error
    with pytest.raises(ValueError, match="no usable records in any split"):
        _prepare(b, root)
    counts = common.skip_counts(b)
    assert {s: c["unreadable_image"] for s, c in counts.items()} == {
        "train": 3,
        "validate": 2,
        "test": 2,
    }


def test_study_datetime():
    f = mimic_cxr_jpg.study_datetime
    assert f("21800506", "213014.531") == "21800506T213014"
    assert f("21800506.0", "85042") == "21800506T085042"
    assert f("21800506", "") == "21800506T000000"
    assert f("21800506", "nan") == "21800506T000000"
    assert f("", "101010") == "" and f("2180", "1") == "" and f("21801399", "1") == ""


# --- Open-i -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openi(tmp_path_factory):
    return fx.make_openi_archives(tmp_path_factory.mktemp("openi"))


def test_openi_split_rule():
    assert [open_i.split_of(str(n)) for n in (1, 2, 3, 4, 5, 6, 8)] == [
        "train", "train", "train", "train", "validate", "train", "test"
    ]  # fmt: skip
    splits = [open_i.split_of(str(n)) for n in range(1, 10001)]
    for split, percent in open_i.SPLIT_PERCENT:
        assert abs(splits.count(split) / len(splits) - percent / 100) < 0.015


def test_openi_caption_view():
    assert open_i.caption_view("Xray Chest PA and Lateral") == ""
    assert open_i.caption_view("PA chest") == "PA"
    assert open_i.caption_view("Chest AP portable") == "AP"
    assert open_i.caption_view("Lateral view") == "LATERAL"
    assert open_i.caption_view("Chest, 2 views") == ""


def test_openi_paths_config(openi, tmp_path, caplog):
    from llmcxr_jax.data import labeler

    b = open_i.OpenI(data_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING):
        _prepare(b, openi)
    data = _read(b)
    counts = common.skip_counts(b)
    for split, exp in fx.OPENI_EXPECTED.items():
        assert set(data[split]) == exp["keep"], split
        assert counts[split] == _expected_skips(exp["skips"]), split
    assert "3.xml" in caplog.text and "malformed XML" in caplog.text

    r = data["train"]["CXR1_1_IM-0001-3001"]
    assert r["subject_id"] == r["study_id"] == "CXR1"
    assert r["view"] == "" and r["study_datetime"] == ""
    assert r["findings"].startswith("The cardiac silhouette") and "XXXX" in r["findings"]
    assert r["impression"] == "Normal chest x-XXXX."
    assert r["report"].splitlines()[0] == "COMPARISON: None."
    assert r["report"].splitlines()[-1] == "IMPRESSION: Normal chest x-XXXX."
    assert r["label_source"] == "mesh+labeler"
    assert json.loads(r["details"]) == {"mesh": ["normal"]}
    assert r["image_path"] == "CXR1_1_IM-0001-3001.png"
    np.testing.assert_array_equal(r["labels"], labeler.label_report("Normal chest x-XXXX."))
    r = data["train"]["CXR2_IM-0652-1001"]  # one image captioned "PA chest"
    assert r["view"] == "PA" and r["findings"] == ""
    assert json.loads(r["details"])["mesh"] == [
        "Cardiomegaly/borderline",
        "Pleural Effusion/right/small",
    ]
    r = data["validate"]["CXR5_IM-2117-1003002"]  # findings only: labelled on the findings
    np.testing.assert_array_equal(r["labels"], labeler.label_report(r["findings"]))


def test_openi_without_png_archive(tmp_path):
    manual = fx.make_openi_archives(tmp_path / "manual", pngs=False)
    b = open_i.OpenI(data_dir=str(tmp_path / "data"))
    _prepare(b, manual)
    data = _read(b)
    # without the PNG archive images cannot be checked: the missing one is kept
    assert "CXR5_IM-2117-1004003" in data["validate"]
    assert common.skip_counts(b)["validate"]["missing_image"] == 0
    with pytest.raises(FileNotFoundError, match="NLMCXR_png.tgz"):
        _prepare(open_i.OpenI(config="images256", data_dir=str(tmp_path / "d2")), manual)


def test_openi_codes_and_images(openi, tmp_path):
    pngs = [f"{i}.png" for _, _, imgs in fx.OPENI_REPORTS.values() for i, _ in imgs]
    codes_dir = fx.write_codes_dir(
        tmp_path / "codes", fx.codes_with_defects(pngs, fx.OPENI_CODES_BAD)
    )
    b = open_i.OpenI(
        config="images256",
        data_dir=str(tmp_path / "data"),
        codes_dir=str(codes_dir),
        allow_upscale=True,
    )
    _prepare(b, openi)
    data = _read(b)
    counts = common.skip_counts(b)
    assert set(data) == {"validate", "test"}  # train: every image skipped -> left out
    assert counts["train"] == _expected_skips(
        {
            "unreadable_report": 1,
            "empty_report": 1,
            "missing_image": 1,
            "missing_codes": 1,
            "invalid_codes": 1,
            "unreadable_image": 1,
        }
    )
    assert counts["validate"] == _expected_skips({"missing_image": 1})
    assert counts["test"] == _expected_skips({"invalid_codes": 1})
    r = data["test"]["CXR8_IM-2333-1001"]
    np.testing.assert_array_equal(r["codes"], fx.codes_for("CXR8_IM-2333-1001.png"))
    assert r["image"].shape == (256, 256, 1) and r["image"].dtype == np.uint8
    assert r["image"].std() > 0


# --- phantoms -----------------------------------------------------------------------------------


def test_phantoms_64(tmp_path):
    from llmcxr_jax.data import phantoms

    b = cxr_phantoms.CxrPhantoms(
        config="64", data_dir=str(tmp_path), train_size=5, validate_size=2, test_size=3, seed=3
    )
    ranges = b.split_ranges()
    assert [len(r) for r in ranges.values()] == [5, 2, 3]
    assert ranges["train"].start == 0
    assert ranges["validate"].start >= 5 and ranges["validate"].stop <= ranges["test"].start
    _prepare(b)
    data = _read(b)
    assert {s: len(v) for s, v in data.items()} == {"train": 5, "validate": 2, "test": 3}
    subjects = {s: {r["subject_id"] for r in recs.values()} for s, recs in data.items()}
    assert not (subjects["train"] & subjects["validate"] or subjects["validate"] & subjects["test"])
    assert all(n == 0 for c in common.skip_counts(b).values() for n in c.values())
    want = phantoms.generate(ranges["validate"].start, seed=3, resolution=64)
    r = data["validate"][str(want["id"])]
    for f in ("subject_id", "study_id", "findings", "impression", "report", "details"):
        assert r[f] == str(want[f]), f
    assert r["view"] == str(want["view"]).upper()
    assert r["label_source"] == "ground_truth" and r["image_path"] == ""
    np.testing.assert_array_equal(r["labels"], np.asarray(want["labels"], np.int8))
    assert r["image"].shape == (64, 64, 1)
    np.testing.assert_array_equal(r["image"][..., 0], want["image"])
    ids = {i for recs in data.values() for i in recs}
    assert len(ids) == 10  # disjoint splits
    reopened = tfds.data_source("cxr_phantoms/64", data_dir=str(tmp_path), split="train")
    assert len(reopened) == 5
    # the records feed the stage rules directly (bytes values)
    recs = [reopened[k] for k in range(len(reopened))]
    chosen = [recs[k] for k in reports.select_stage2(recs)]
    assert all(r["view"] in (b"PA", b"AP") and r["impression"] for r in chosen)
    assert len({r["subject_id"] for r in chosen}) == len(chosen) >= 1


def test_phantoms_codes_and_empty_split(tmp_path):
    from llmcxr_jax.data import phantoms

    b = cxr_phantoms.CxrPhantoms(
        data_dir=str(tmp_path / "data"),
        train_size=4,
        validate_size=1,
        test_size=1,
        codes_dir=str(tmp_path / "codes"),
    )
    ranges = b.split_ranges()
    pid = {
        s: [str(phantoms.generate(i, seed=0, resolution=64)["id"]) for i in r]
        for s, r in ranges.items()
    }
    entries = {i: fx.codes_for(i) for i in pid["train"][:3]}  # train: 3 valid, 1 out of range
    entries[pid["train"][3]] = [fx.N_EMBED] * fx.NUM_CODES
    entries[pid["test"][0]] = fx.codes_for(pid["test"][0])  # validate: none -> left out
    fx.write_codes_dir(tmp_path / "codes", entries)
    _prepare(b)
    data = _read(b)
    assert set(data) == {"train", "test"}
    assert set(data["train"]) == set(pid["train"][:3])
    counts = common.skip_counts(b)
    assert counts["train"]["invalid_codes"] == 1 and counts["validate"]["missing_codes"] == 1
    np.testing.assert_array_equal(data["test"][pid["test"][0]]["codes"], entries[pid["test"][0]])


# --- shared schema ------------------------------------------------------------------------------


def test_label_schema_has_one_owner():
    from llmcxr_jax.data import labeler, vqa

    # data/labels.py declares the observations; the labeler, VQA and the builders use them
    assert labeler.OBSERVATIONS is OBSERVATIONS and vqa.OBSERVATIONS is OBSERVATIONS
    assert mimic_cxr_jpg.OBSERVATIONS is OBSERVATIONS
    assert not hasattr(common, "OBSERVATIONS")
    assert common.empty_labels().tolist() == [NOT_MENTIONED] * NUM_OBSERVATIONS


def test_schema_helpers():
    rec = common.make_record(id="x", codes=[1, 2])
    assert rec["details"] == "{}" and rec["labels"].tolist() == [-2] * 14
    assert rec["codes"].dtype == np.int16
    with pytest.raises(KeyError):
        common.make_record(idd="x")
    png = common.png_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4))
    back = np.asarray(Image.open(io.BytesIO(png)))
    np.testing.assert_array_equal(back, np.arange(12).reshape(3, 4))
    f = common.features(None)
    assert "image" not in f and common.features(64)["image"].shape == (64, 64, 1)
