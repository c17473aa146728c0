"""The embedded phantom data set: labels, determinism, anatomy, sampler, patients, speed.

Image checks compare the same case with and without a finding (same render seed, so only the
finding differs), in body coordinates mapped to pixels for an unrotated, centred case.
"""

import dataclasses
import json
import re
from collections import Counter, defaultdict

import numpy as np
import pytest

from llmcxr_jax.data import labeler, phantoms
from llmcxr_jax.data.image_sources import PhantomImageSource
from llmcxr_jax.data.labels import OBSERVATIONS, paper_labels
from llmcxr_jax.data.phantoms import (
    FINDING_NAMES,
    Case,
    CaseSampler,
    Finding,
    generate,
    make_case,
    render,
    sample_case,
    write_report,
)

RES = 256
STRAIGHT = dict(rotation=0.0, shift_x=0.0, shift_y=0.0, size=1.0, aspect=1.0, noise=0.0)


def region(img: np.ndarray, u0: float, u1: float, v0: float, v1: float) -> float:
    """Mean over a body-coordinate rectangle of an unrotated, centred, size-1 case."""
    n = img.shape[0]
    px = lambda a: int(round((a + 1) * n / 2))
    return float(img[px(v0) : px(v1), px(u0) : px(u1)].mean())


def pair(findings, seed=0, **kw):
    """(image without, image with) the findings, same anatomy and render seed."""
    case = make_case(findings, seed=seed, **STRAIGHT, **kw)
    plain = dataclasses.replace(case, findings=())
    r = lambda c: render(c, RES, np.random.default_rng(7)).astype(np.float64)
    return r(plain), r(case), case


# --- reports and labels -------------------------------------------------------------------------


def test_labeler_recovers_ground_truth():
    seen = defaultdict(set)
    n = 0
    for seed in (0, 1, 2):
        for i in range(1000):
            r = generate(i, seed=seed, resolution=8)
            want = r["labels"]
            for text in (r["report"], r["findings"] + " " + r["impression"]):
                got = labeler.label_report(text)
                assert np.array_equal(got, want), (
                    f"{r['id']}\n{text}\nlabels {want.tolist()}\nlabeler {got.tolist()}"
                )
            for j, value in enumerate(want):
                seen[OBSERVATIONS[j]].add(int(value))
            n += 1
    assert n == 3000
    # each finding's observation takes every value somewhere
    for obs in ("Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Consolidation", "Edema"):
        assert seen[obs] == {1, 0, -1, -2}, obs
    assert seen["Lung Lesion"] == {1, 0, -1, -2}
    assert seen["Pneumonia"] == {1, 0, -1, -2}
    assert seen["No Finding"] == {1, -2}


def test_report_structure_and_variety():
    sentences = Counter()
    for i in range(300):
        r = generate(i, seed=3, resolution=8)
        assert r["report"].endswith(f"FINDINGS: {r['findings']}\n\nIMPRESSION: {r['impression']}")
        assert r["findings"] and r["impression"]
        if (r["labels"][0]) == 1:
            sentences.update(s.strip() for s in r["findings"].split(". "))
    assert len(sentences) > 25  # varied phrasings of the normal structures
    prefixed = [generate(i, seed=3, resolution=8)["report"][:12] for i in range(60)]
    assert any(p.startswith(("EXAMINATION", "INDICATION", "COMPARISON")) for p in prefixed)


def test_hedging_controls_uncertainty():
    small = Finding("pleural_effusion", "left", None, "small")
    ef = OBSERVATIONS.index("Pleural Effusion")
    case = make_case([small])
    for k in range(20):
        assert write_report(case, np.random.default_rng(k), hedge=1.0)[2][ef] == -1
        assert write_report(case, np.random.default_rng(k), hedge=0.0)[2][ef] == 1
    large = make_case([Finding("pleural_effusion", "left", None, "large")])
    assert write_report(large, np.random.default_rng(0), hedge=1.0)[2][ef] == 1


def test_details_match_case():
    for i in range(50):
        r = generate(i, seed=4, resolution=8)
        d = json.loads(r["details"])
        assert d["view"] == r["view"]
        for f in d["findings"]:
            Finding(**f)  # valid
        names = [f["name"] for f in d["findings"]]
        labels = r["labels"]
        assert (labels[0] == 1) == (not names)  # normal iff no finding (nothing else is said)
        ctr = d["ctr"]
        assert (ctr > 0.5) == ("cardiomegaly" in names)


# --- determinism --------------------------------------------------------------------------------


def test_deterministic_by_seed_and_index():
    a, b = generate(17, seed=5, resolution=64), generate(17, seed=5, resolution=64)
    for key in a:
        if isinstance(a[key], np.ndarray):
            np.testing.assert_array_equal(a[key], b[key])
        else:
            assert a[key] == b[key], key
    c = generate(17, seed=6, resolution=64)
    assert c["id"] != a["id"] and not np.array_equal(c["image"], a["image"])
    src = PhantomImageSource(4, 32, seed=5, offset=15)
    np.testing.assert_array_equal(
        src[2]["image"], PhantomImageSource(4, 32, seed=5, offset=15)[2]["image"]
    )
    assert src[2]["id"] == a["id"]


def test_record_fields():
    r = generate(3, seed=0, resolution=32)
    assert r["id"] == "phantom-0-0000003"
    assert r["image"].dtype == np.uint8 and r["image"].shape == (32, 32)
    assert r["labels"].dtype == np.int8 and r["labels"].shape == (14,)
    assert re.fullmatch(r"\d{8}T\d{6}", r["study_datetime"])
    assert r["view"] in ("PA", "AP")
    with pytest.raises(ValueError):
        generate(-1)


# --- anatomy ------------------------------------------------------------------------------------


def test_normal_anatomy():
    for seed in range(4):
        case = make_case([], seed=seed, **STRAIGHT)
        img = render(case, RES, np.random.default_rng(seed)).astype(np.float64)
        lung_r = region(img, -0.45, -0.3, -0.3, 0.0)  # patient right = image left
        lung_l = region(img, 0.3, 0.45, -0.3, 0.0)
        mediastinum = region(img, -0.04, 0.04, -0.45, -0.15)
        outside = region(img, -1.0, -0.9, -1.0, -0.9)
        abdomen = region(img, -0.3, 0.3, 0.8, 0.95)
        assert outside < 20
        assert lung_r + 60 < mediastinum and lung_l + 60 < mediastinum
        assert lung_r + 60 < abdomen
        # heart mostly on the image right: bright at u = +0.25, lung at u = -0.25 (heart level)
        assert region(img, 0.18, 0.28, 0.2, 0.3) > region(img, -0.3, -0.22, 0.2, 0.3) + 50
        # right hemidiaphragm (image left) higher: first bright row below the lungs
        cols = {side: int((side * 0.5 + 1) * RES / 2) for side in (-1, 1)}
        top = {}
        for side, col in cols.items():
            profile = img[RES // 2 :, col - 2 : col + 3].mean(axis=1)
            top[side] = int(np.argmax(profile > (profile.min() + profile.max()) / 2))
        assert top[-1] < top[1], top


def test_cardiomegaly_widens_heart():
    def heart_width(img):
        rows = img[int(1.25 * RES / 2) : int(1.32 * RES / 2)]  # v = 0.25 .. 0.32
        thresh = (region(img, 0.3, 0.45, -0.3, 0.0) + region(img, -0.04, 0.04, -0.45, -0.15)) / 2
        inner = rows[:, int(0.35 * RES / 2) : int(1.65 * RES / 2)] > thresh
        return inner.sum(axis=1).mean() / (1.32 * RES / 2)  # / thoracic width

    widths = []
    for sev in (None, "mild", "moderate", "severe"):
        found = [Finding("cardiomegaly", severity=sev)] if sev else []
        case = make_case(found, seed=2, **STRAIGHT, heart=0.5)
        img = render(case, RES, np.random.default_rng(0)).astype(np.float64)
        widths.append(heart_width(img))
        assert abs(widths[-1] - phantoms.cardiothoracic_ratio(case)) < 0.06, (sev, widths[-1])
    assert widths == sorted(widths) and widths[0] < 0.5 < widths[1], widths


@pytest.mark.parametrize("side", ["left", "right", "bilateral"])
def test_effusion_fills_costophrenic_angle(side):
    plain, eff, case = pair([Finding("pleural_effusion", side, None, "moderate")])
    for s, dome in ((-1, case.dome_right), (1, case.dome_left)):
        box = (*sorted((s * 0.48, s * 0.62)), dome + 0.08, dome + 0.18)  # costophrenic angle
        affected = side == "bilateral" or (side == "left") == (s == 1)
        if affected:
            assert region(eff, *box) > region(plain, *box) + 25, (side, s)
        else:
            assert abs(region(eff, *box) - region(plain, *box)) < 1


@pytest.mark.parametrize("side", ["left", "right"])
def test_pneumothorax_darkens_lateral_apex(side):
    plain, ptx, _ = pair([Finding("pneumothorax", side, None, "moderate")])
    s = 1 if side == "left" else -1
    lateral = lambda img, s: region(img, *sorted((s * 0.5, s * 0.62)), -0.35, -0.05)
    assert lateral(ptx, s) < lateral(plain, s) - 8
    assert abs(lateral(ptx, -s) - lateral(plain, -s)) < 1


@pytest.mark.parametrize(
    "finding,box",
    [
        (Finding("consolidation", "right", "lower", "moderate"), (-0.55, -0.25, 0.0, 0.35)),
        (Finding("consolidation", "left", "upper", "severe"), (0.2, 0.55, -0.5, -0.05)),
        (Finding("lung_lesion", "left", "upper", "large"), (0.2, 0.55, -0.5, -0.05)),
        (Finding("lung_lesion", "right", "lower", "small"), (-0.55, -0.3, -0.05, 0.3)),
        (Finding("edema", None, None, "moderate"), (-0.4, -0.15, -0.15, 0.2)),
    ],
)
def test_opacities_brighten_their_zone(finding, box):
    plain, sick, _ = pair([finding])
    assert region(sick, *box) > region(plain, *box) + 2
    if finding.side:  # the other lung is untouched
        other = (-box[1], -box[0], box[2], box[3])
        assert abs(region(sick, *other) - region(plain, *other)) < 1


def test_variation_between_cases():
    rng = np.random.default_rng(0)
    imgs = [render(sample_case(rng), 64, rng).astype(np.float64) for _ in range(20)]
    assert np.mean([np.abs(a - b).mean() for a, b in zip(imgs[:-1], imgs[1:], strict=True)]) > 5


# --- sampler ------------------------------------------------------------------------------------


def test_default_prevalence():
    sampler = CaseSampler()
    rng = np.random.default_rng(0)
    cases = [sample_case(rng, sampler) for _ in range(5000)]
    counts = Counter(f.name for c in cases for f in c.findings)
    for name in FINDING_NAMES:
        assert abs(counts[name] / len(cases) - sampler.p(name)) < 0.025, name
    normal = sum(not c.findings for c in cases) / len(cases)
    assert abs(normal - sampler.expected_normal_fraction()) < 0.025
    assert 0.26 < normal < 0.36
    ap = sum(c.view == "AP" for c in cases) / len(cases)
    assert 0.11 < ap < 0.19
    # the CHF cluster: cardiomegaly much more frequent with edema
    with_edema = [c for c in cases if c.finding("edema")]
    assert np.mean([bool(c.finding("cardiomegaly")) for c in with_edema]) > 0.55


def test_custom_prevalence_and_forcing():
    rng = np.random.default_rng(1)
    only_ptx = CaseSampler(prevalence={"pneumothorax": 0.5})
    cases = [sample_case(rng, only_ptx) for _ in range(2000)]
    assert {f.name for c in cases for f in c.findings} == {"pneumothorax"}
    assert abs(np.mean([bool(c.findings) for c in cases]) - 0.5) < 0.04
    forced = Finding("lung_lesion", "left", "lower", "large")
    s = CaseSampler(force=("edema", forced))
    for _ in range(50):
        c = sample_case(rng, s)
        assert c.finding("edema") is not None and c.finding("lung_lesion") == forced
    s = CaseSampler(force=("pneumothorax",), only_forced=True)
    assert all(
        [f.name for f in sample_case(rng, s).findings] == ["pneumothorax"] for _ in range(20)
    )
    with pytest.raises(ValueError):
        CaseSampler(prevalence={"fracture": 0.1})
    with pytest.raises(ValueError):
        Finding("pneumothorax", "bilateral", None, "small")
    with pytest.raises(ValueError):
        Finding("cardiomegaly", None, None, "large")


# --- patients -----------------------------------------------------------------------------------


def test_subjects_have_several_dated_studies():
    studies = defaultdict(list)
    for i in range(300):
        r = generate(i, seed=0, resolution=8)
        studies[r["subject_id"]].append((r["study_datetime"], i, r["study_id"]))
    sizes = Counter(len(v) for v in studies.values())
    assert set(sizes) <= {1, 2, 3} and sizes[2] + sizes[3] > 0.3 * len(studies)
    earliest_not_first = 0
    for sid, items in studies.items():
        dates = [d for d, _, _ in items]
        assert len(set(dates)) == len(dates), sid
        indices = sorted(i for _, i, _ in items)
        assert indices == list(range(indices[0], indices[0] + len(indices)))  # one block
        assert sid.endswith(f"p{indices[0]:07d}")
        earliest_not_first += min(items)[1] != indices[0]
    assert earliest_not_first > 0  # the earliest study is not always the lowest index
    assert len({s for v in studies.values() for _, _, s in v}) == 300


# --- image source -------------------------------------------------------------------------------


def test_image_source():
    src = PhantomImageSource(10, 32, seed=2, offset=5)
    assert len(src) == 10 and src.num_labels == 6
    rec = src[3]
    assert rec["image"].shape == (32, 32, 3) and rec["image"].dtype == np.float32
    assert rec["image"].min() >= -1.0 and rec["image"].max() <= 1.0
    assert rec["labels"].shape == (6,) and rec["labels"].dtype == np.float32
    g = generate(8, seed=2, resolution=32)
    assert rec["id"] == g["id"]
    np.testing.assert_array_equal(rec["image"][..., 1], g["image"] / np.float32(127.5) - 1)
    want = (paper_labels(g["labels"]) == 1).astype(np.float32)
    np.testing.assert_array_equal(rec["labels"], want)
    with pytest.raises(IndexError):
        src[10]
    labels = np.stack([PhantomImageSource(200, 8)[i]["labels"] for i in range(200)])
    assert set(np.unique(labels)) <= {0.0, 1.0}
    assert 0.2 < labels[:, 0].mean() < 0.45 and labels[:, 1:].sum(axis=0).min() > 0


# --- speed --------------------------------------------------------------------------------------


def test_case_is_plain_data():
    c = Case()
    assert c.findings == () and c.view == "PA"
    assert phantoms.cardiothoracic_ratio(c) < 0.5
    assert render(c, 8, np.random.default_rng(0)).shape == (8, 8)
