"""Procedural chest X-ray phantoms with radiology reports: the embedded default data set.

Why this module exists: MIMIC-CXR is credentialed and Open-i may not be redistributed, yet the
demo must train a VQ-GAN and an LLM, and evaluate them with the labeler and a CXR classifier, on
a 2-core CPU in minutes with no download. So the data are drawn here, deterministically from
(seed, index): frontal chest films whose findings change the picture the way they do on a real
film, and reports about them whose CheXpert labels are known exactly.

Pictures (`render`, numpy only, a few ms at 256 px): an X-ray-like attenuation sum (bright =
dense) of the body's soft tissue, two air-filled lungs with vessel markings fanning from the
hila, posterior and anterior ribs, spine, clavicles, trachea, heart (mostly on the patient's
left = the IMAGE RIGHT, radiological convention), hemidiaphragm domes (the right one higher)
and a gastric bubble, then exposure, gamma and noise. Each case varies in body size, rotation,
offset, inspiration, heart size, rib spacing, exposure and noise; a patient's studies share
their build. Findings:

- cardiomegaly (mild/moderate/severe): the heart widens, CTR 0.53-0.57 / 0.59-0.64 / 0.66-0.72;
- pleural_effusion (left/right/bilateral; small/moderate/large): a homogeneous basal opacity
  with a meniscus (higher laterally) that blunts the costophrenic angle and hides the dome;
- pneumothorax (left/right; small/moderate/large): a dark, vessel-free rim along the apex and
  lateral wall outside the collapsed lung's edge, which shows as a thin bright pleural line;
- consolidation (left/right; upper/lower zone; mild/moderate/severe): patchy dense opacity
  clipped to the lung, with air bronchograms in some cases;
- edema (mild/moderate/severe): bilateral perihilar "bat wing" haze, stronger vessel and
  interstitial markings (Kerley B lines at 128 px and up);
- lung_lesion (left/right; upper/lower; small = nodule, large = mass): round dense opacity.

Normal hearts have a CTR of 0.39-0.47 (AP views magnify the heart by 6%).

Reports (`write_report`): FINDINGS and IMPRESSION from varied sentence templates, with
negations of what is absent and, for mild findings (probability `hedge`), hedged wording.
Every template is tagged with the CheXpert labels it asserts, and a report's labels are the
aggregate of its tags (CheXpert's rule: positive > uncertain > negative > not mentioned; No
Finding positive when nothing but Support Devices is positive or uncertain), i.e. what the
report SAYS, in the conventions of `labeler.py` (which recovers them exactly; tested). A hedged
finding is on the film but uncertain in the labels. Some reports start with EXAMINATION,
INDICATION (whose words are not findings) or COMPARISON sections.

Records (`generate`): indices come in blocks of three that belong to one to three patients, so
about half the patients have 2-3 studies on distinct dates (earliest-study selection is
meaningful); 85% PA views, 15% AP.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmcxr_jax.data import labeler

FINDING_NAMES: tuple[str, ...] = (
    "cardiomegaly",
    "pleural_effusion",
    "pneumothorax",
    "consolidation",
    "edema",
    "lung_lesion",
)
SEVERITIES: dict[str, tuple[str, ...]] = {
    "cardiomegaly": ("mild", "moderate", "severe"),
    "pleural_effusion": ("small", "moderate", "large"),
    "pneumothorax": ("small", "moderate", "large"),
    "consolidation": ("mild", "moderate", "severe"),
    "edema": ("mild", "moderate", "severe"),
    "lung_lesion": ("small", "large"),
}
SIDES: dict[str, tuple[str, ...]] = {
    "pleural_effusion": ("left", "right", "bilateral"),
    "pneumothorax": ("left", "right"),
    "consolidation": ("left", "right"),
    "lung_lesion": ("left", "right"),
}
ZONED = ("consolidation", "lung_lesion")
ZONES = ("upper", "lower")
# marginal prevalence of each finding (CaseSampler): about 31% of cases are normal
DEFAULT_PREVALENCE: dict[str, float] = {
    "cardiomegaly": 0.25,
    "pleural_effusion": 0.30,
    "pneumothorax": 0.12,
    "consolidation": 0.25,
    "edema": 0.18,
    "lung_lesion": 0.12,
}
CTR_RANGES: dict[str, tuple[float, float]] = {
    "normal": (0.39, 0.47),
    "mild": (0.53, 0.57),
    "moderate": (0.59, 0.64),
    "severe": (0.66, 0.72),
}
AP_MAGNIFICATION = 1.06
NUM_LABELS = len(labeler.PAPER_CLASSES)


@dataclass(frozen=True)
class Finding:
    """One abnormality: side (left/right/bilateral or None), zone (upper/lower or None)."""

    name: str
    side: str | None = None
    zone: str | None = None
    severity: str = ""

    def __post_init__(self) -> None:
        if self.name not in FINDING_NAMES:
            raise ValueError(f"unknown finding {self.name!r}; expected one of {FINDING_NAMES}")
        if self.severity not in SEVERITIES[self.name]:
            raise ValueError(
                f"{self.name}: severity {self.severity!r} not in {SEVERITIES[self.name]}"
            )
        sides = SIDES.get(self.name, (None,))
        if self.side not in sides:
            raise ValueError(f"{self.name}: side {self.side!r} not in {sides}")
        zones = ZONES if self.name in ZONED else (None,)
        if self.zone not in zones:
            raise ValueError(f"{self.name}: zone {self.zone!r} not in {zones}")


@dataclass(frozen=True)
class Case:
    """Findings plus the anatomy and exposure of one film (coordinates: image half-widths)."""

    findings: tuple[Finding, ...] = ()
    view: str = "PA"
    size: float = 1.0  # zoom of the body in the image
    aspect: float = 1.0  # body width / height
    rotation: float = 0.0  # degrees
    shift_x: float = 0.0
    shift_y: float = 0.0
    heart: float = 0.5  # heart size within the CTR range of its severity (0..1)
    lung_width: float = 1.0
    lung_height: float = 1.0
    dome_right: float = 0.34  # v (downwards) of the right (image left) hemidiaphragm's top
    dome_left: float = 0.40
    rib_spacing: float = 0.1
    exposure: float = 1.0
    gamma: float = 1.0
    noise: float = 0.02
    soft_tissue: float = 1.0  # body density (habitus)
    air_bronchograms: bool = False

    def finding(self, name: str) -> Finding | None:
        return next((f for f in self.findings if f.name == name), None)


def cardiothoracic_ratio(case: Case) -> float:
    """The rendered heart's width over the thorax's inner width."""
    cm = case.finding("cardiomegaly")
    lo, hi = CTR_RANGES[cm.severity if cm else "normal"]
    ctr = lo + float(np.clip(case.heart, 0.0, 1.0)) * (hi - lo)
    return ctr * (AP_MAGNIFICATION if case.view == "AP" else 1.0)


# --- sampling -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseSampler:
    """How cases are drawn.

    `prevalence`: the marginal probability of each finding (missing names: 0). Given edema,
    cardiomegaly and pleural effusion (then mostly bilateral) come with probability
    `edema_cluster` (the CHF cluster); their probability without edema is lowered so that
    their marginals stay as configured where possible. Defaults give about 31% normal cases.
    `force`: findings always present (a name: random side/severity; a `Finding`: as given);
    with `only_forced` nothing else is sampled. `hedge`: probability that a mild/small finding
    is reported with uncertainty. `ap_fraction`: share of AP views.
    """

    prevalence: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_PREVALENCE))
    edema_cluster: float = 0.7
    hedge: float = 0.3
    ap_fraction: float = 0.15
    force: tuple[str | Finding, ...] = ()
    only_forced: bool = False

    def __post_init__(self) -> None:
        for name, p in self.prevalence.items():
            if name not in FINDING_NAMES:
                raise ValueError(f"unknown finding {name!r} in prevalence")
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"prevalence of {name} must be in [0, 1], got {p}")
        for f in self.force:
            if not isinstance(f, Finding) and f not in FINDING_NAMES:
                raise ValueError(f"cannot force unknown finding {f!r}")

    def p(self, name: str) -> float:
        return float(self.prevalence.get(name, 0.0))

    def conditional(self, name: str) -> tuple[float, float]:
        """(P(name | no edema), P(name | edema)) for the clustered findings."""
        pe, pn = self.p("edema"), self.p(name)
        q1 = max(self.edema_cluster, pn) if pe > 0 else pn
        q0 = float(np.clip((pn - pe * q1) / (1 - pe), 0.0, 1.0)) if pe < 1 else pn
        return q0, q1

    def expected_normal_fraction(self) -> float:
        """P(no finding at all) under this sampler (ignoring `force`)."""
        pe = self.p("edema")
        others = np.prod([1 - self.p(n) for n in ("pneumothorax", "consolidation", "lung_lesion")])
        (c0, _), (e0, _) = self.conditional("cardiomegaly"), self.conditional("pleural_effusion")
        return float((1 - pe) * (1 - c0) * (1 - e0) * others)


def _choice(rng: np.random.Generator, options: Sequence[Any], p: Sequence[float] | None = None):
    return options[int(rng.choice(len(options), p=p))]


def random_finding(
    name: str, rng: np.random.Generator, *, side: str | None = None, severity: str | None = None
) -> Finding:
    """A finding with random side, zone and severity (unless given)."""
    sev_p = {2: (0.65, 0.35), 3: (0.45, 0.35, 0.2)}[len(SEVERITIES[name])]
    if severity is None:
        severity = _choice(rng, SEVERITIES[name], sev_p)
    if side is None and name in SIDES:
        side = _choice(rng, SIDES[name], (0.35, 0.35, 0.3) if len(SIDES[name]) == 3 else None)
    zone = None
    if name == "consolidation":
        zone = _choice(rng, ZONES, (0.3, 0.7))
    elif name == "lung_lesion":
        zone = _choice(rng, ZONES, (0.6, 0.4))
    return Finding(name, side, zone, severity)


def sample_anatomy(rng: np.random.Generator) -> dict[str, float]:
    """A patient's build (shared by all of their studies)."""
    return {
        "size": float(rng.uniform(0.9, 1.04)),
        "aspect": float(rng.uniform(0.94, 1.06)),
        "heart": float(rng.uniform(0.0, 1.0)),
        "lung_width": float(rng.uniform(0.95, 1.04)),
        "lung_height": float(rng.uniform(0.94, 1.04)),
        "dome_right": float(rng.uniform(0.28, 0.38)),
        "rib_spacing": float(rng.uniform(0.092, 0.108)),
        "soft_tissue": float(rng.uniform(0.88, 1.15)),
    }


def sample_case(
    rng: np.random.Generator,
    sampler: CaseSampler | None = None,
    *,
    anatomy: Mapping[str, float] | None = None,
) -> Case:
    """Draw findings (and per-study positioning/exposure) for one film."""
    sampler = sampler or CaseSampler()
    anat = dict(anatomy) if anatomy is not None else sample_anatomy(rng)
    findings: dict[str, Finding] = {}
    if not sampler.only_forced:
        edema = rng.random() < sampler.p("edema")
        if edema:
            findings["edema"] = random_finding("edema", rng)
        for name in ("cardiomegaly", "pleural_effusion"):
            q0, q1 = sampler.conditional(name)
            if rng.random() < (q1 if edema else q0):
                bilateral = edema and name == "pleural_effusion" and rng.random() < 0.8
                findings[name] = random_finding(name, rng, side="bilateral" if bilateral else None)
        for name in ("pneumothorax", "consolidation", "lung_lesion"):
            if rng.random() < sampler.p(name):
                findings[name] = random_finding(name, rng)
    for f in sampler.force:
        finding = f if isinstance(f, Finding) else random_finding(f, rng)
        findings[finding.name] = finding
    ordered = tuple(findings[n] for n in FINDING_NAMES if n in findings)
    view = "AP" if rng.random() < sampler.ap_fraction else "PA"
    dome_right = anat["dome_right"] + float(rng.normal(0, 0.015)) - (0.04 if view == "AP" else 0)
    return Case(
        findings=ordered,
        view=view,
        size=anat["size"],
        aspect=anat["aspect"],
        rotation=float(rng.normal(0, 1.5)),
        shift_x=float(rng.normal(0, 0.025)),
        shift_y=float(rng.normal(0, 0.025)),
        heart=anat["heart"],
        lung_width=anat["lung_width"],
        lung_height=anat["lung_height"],
        dome_right=dome_right,
        dome_left=dome_right + float(rng.uniform(0.03, 0.08)),
        rib_spacing=anat["rib_spacing"],
        soft_tissue=anat["soft_tissue"],
        exposure=float(rng.uniform(0.85, 1.15)),
        gamma=float(rng.uniform(0.88, 1.12)),
        noise=float(rng.uniform(0.01, 0.03)),
        air_bronchograms=bool(rng.random() < 0.4),
    )


def make_case(findings: Sequence[str | Finding] = (), seed: int = 0, **overrides: Any) -> Case:
    """A case with exactly these findings (names get random side/severity), for tests/figures."""
    sampler = CaseSampler(force=tuple(findings), only_forced=True, ap_fraction=0.0)
    case = sample_case(np.random.default_rng([seed, 99]), sampler)
    return dataclasses.replace(case, **overrides)


# --- rendering ----------------------------------------------------------------------------------

_LUNG_C, _LUNG_A = 0.31, 0.35  # lung centre and half-width (|u|); lateral wall at 0.66
_LUNG_VC, _LUNG_B = 0.25, 0.87  # below vc the lateral wall is vertical; apex at vc - b
_DOME_K, _DOME_U = 0.22, 0.33  # dome curvature and its top's |u|
_AIR = 0.72  # attenuation removed by fully aerated lung
_SIDE_CODE = {None: 0, "left": 1, "right": 2, "bilateral": 3}
_NOISE_TILE: list[np.ndarray] = []


class _Canvas:
    """Pixel grid in body coordinates: u across (patient right = image left < 0), v down."""

    def __init__(self, case: Case, resolution: int):
        r = self.res = resolution
        g = ((np.arange(r, dtype=np.float32) + 0.5) * (2.0 / r) - 1.0).astype(np.float32)
        th = np.deg2rad(case.rotation)
        self.cos, self.sin = float(np.cos(th)), float(np.sin(th))
        self.sx, self.sy = case.size * case.aspect, case.size
        self.ox, self.oy = case.shift_x, case.shift_y
        xs, ys = g[None, :] - np.float32(self.ox), g[:, None] - np.float32(self.oy)
        self.u = ((self.cos * xs + self.sin * ys) * (1 / self.sx)).astype(np.float32)
        self.v = ((self.cos * ys - self.sin * xs) * (1 / self.sy)).astype(np.float32)
        self.px = 2.0 / (r * case.size)  # one pixel in body units
        self.e = max(0.012, 1.2 * self.px)  # edge softness

    def box(self, u0: float, u1: float, v0: float, v1: float) -> tuple[slice, slice]:
        """Pixel rows/columns covering the body-space rectangle [u0, u1] x [v0, v1]."""
        us, vs = np.array([u0, u1, u0, u1]), np.array([v0, v0, v1, v1])
        x = self.ox + self.cos * us * self.sx - self.sin * vs * self.sy
        y = self.oy + self.sin * us * self.sx + self.cos * vs * self.sy
        cx, cy = (x + 1) * (self.res / 2), (y + 1) * (self.res / 2)
        rows = slice(max(0, int(cy.min()) - 1), min(self.res, int(cy.max()) + 2))
        cols = slice(max(0, int(cx.min()) - 1), min(self.res, int(cx.max()) + 2))
        return rows, cols


def _ramp(x: np.ndarray, e: float) -> np.ndarray:
    """Soft step 0 -> 1 around x = 0, width e."""
    return np.clip(x * (1.0 / e) + 0.5, 0.0, 1.0)


def _inner(win: tuple[slice, slice], outer: tuple[slice, slice]) -> tuple[slice, slice]:
    """`win` (image pixels) clipped to `outer` and made relative to it."""
    out = []
    for w, o in zip(win, outer, strict=True):
        lo, hi = max(w.start, o.start), min(w.stop, o.stop)
        out.append(slice(lo - o.start, max(lo, hi) - o.start))
    return out[0], out[1]


def _noise(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Unit Gaussian pixel noise: a random crop/flip of one cached tile (fast, deterministic)."""
    n = max(512, *shape)
    if not _NOISE_TILE or _NOISE_TILE[0].shape[0] < n:
        _NOISE_TILE[:] = [np.random.default_rng(1234).standard_normal((n, n), dtype=np.float32)]
    tile = _NOISE_TILE[0]
    oy, ox = (int(rng.integers(0, tile.shape[i] - shape[i] + 1)) for i in (0, 1))
    crop = tile[oy : oy + shape[0], ox : ox + shape[1]]
    flip = int(rng.integers(4))
    return crop[:: 1 - 2 * (flip & 1), :: 1 - (flip & 2)]


def render(case: Case, resolution: int, rng: np.random.Generator) -> np.ndarray:
    """The film of `case`: uint8 grey [resolution, resolution], bright = dense."""
    if resolution < 8:
        raise ValueError(f"resolution must be >= 8, got {resolution}")
    cv = _Canvas(case, resolution)
    e = cv.e
    base_seed = int(rng.integers(2**62))
    ph = [float(x) for x in rng.uniform(0.0, 2 * np.pi, 8)]  # texture phases (weak floats)
    lw, lh = case.lung_width, case.lung_height
    c0, a0, b0 = _LUNG_C * lw, _LUNG_A * lw, _LUNG_B * lh
    ap = case.view == "AP"

    # body: elliptic cross-section (thickness), shoulders narrowing to the neck
    u, v = cv.u, cv.v
    sh = np.clip((-0.7 - v) * (1 / 0.3), 0.0, 1.0)
    q = u / (0.96 - 0.62 * sh * sh * (3 - 2 * sh))
    mu = np.sqrt(np.clip(1.0 - q * q, 0.0, 1.0)) * np.float32(case.soft_tissue)

    # the thorax window: lungs, heart, vessels, ribs and findings
    tw = cv.box(-0.8 * lw, 0.8 * lw, -0.8 * lh, 0.8)
    tu, tv = u[tw], v[tw]
    au = np.abs(tu)
    dx = (au - c0) * (1 / a0)
    dy = np.minimum(tv - _LUNG_VC, 0.0) * (1 / b0)
    ell = dx * dx + dy * dy
    dome_top = np.where(tu < 0, np.float32(case.dome_right), np.float32(case.dome_left))
    dq = (au - _DOME_U) * (1 / _DOME_U)
    dome = dome_top + _DOME_K * dq * dq
    knob = np.clip(1.0 - ((tv + 0.22) * 9) ** 2, 0.0, 1.0) * (tu > 0)
    medial = 0.095 + 0.06 * knob + 0.03 * np.clip(tv * 3, 0.0, 1.0)
    lung = _ramp((1.0 - np.sqrt(ell)) * a0, e) * _ramp(dome - tv, e) * _ramp(au - medial, e)
    air = lung * (0.75 + 0.25 * np.sqrt(np.clip(1.0 - ell, 0.0, 1.0)))
    tissue = lung.copy()  # lung parenchyma (vessels): not in a pneumothorax or under fluid

    # heart: asymmetric ellipse, a third right of the midline, apex down and to the image right
    width = cardiothoracic_ratio(case) * 2 * (c0 + a0)
    wr = width / 2.55
    wl = width - wr
    hx, hy, hh = 0.02 + 0.5 * (wl - wr) - 0.069, 0.3, 0.29
    hdx = tu - hx - 0.12 * (tv - hy)
    hdx = hdx / np.where(hdx < 0, np.float32(wr), np.float32(wl))
    hdy = (tv - hy) * (1 / hh)
    heart = _ramp((1.0 - np.sqrt(hdx * hdx + hdy * hdy)) * wr, e)
    air *= 1.0 - 0.95 * heart
    mt = np.zeros_like(tu)  # attenuation added inside the thorax window

    vessel_gain = 1.0
    order = ("pneumothorax", "pleural_effusion", "consolidation", "lung_lesion", "edema")
    for f in sorted(case.findings, key=lambda f: order.index(f.name) if f.name in order else -1):
        if f.name == "cardiomegaly":
            continue  # drawn with the heart
        frng = np.random.default_rng([base_seed, FINDING_NAMES.index(f.name), _SIDE_CODE[f.side]])
        side: Any = 1.0
        if f.side == "right":  # patient right = image left
            side = _ramp(-tu, e)
        elif f.side == "left":
            side = _ramp(tu, e)
        if f.name == "pneumothorax":
            d_lat, d_apex = {"small": (0.03, 0.09), "moderate": (0.1, 0.2), "large": (0.2, 0.34)}[
                f.severity
            ]
            d = d_lat * frng.uniform(0.85, 1.15) * (1 - 0.55 * np.clip((tv + 0.1) * 1.67, 0, 1))
            cc, ac = c0 - 0.5 * d, a0 - 0.5 * d
            bc = b0 - d_apex * frng.uniform(0.85, 1.15)
            ex = (au - cc) / ac
            ey = np.minimum(tv - _LUNG_VC, 0.0) * (1 / bc)
            dist = (1.0 - np.sqrt(ex * ex + ey * ey)) * ac  # ~ distance inside the collapsed edge
            rim = lung * (1.0 - _ramp(dist, e)) * side
            air = air * (1.0 - rim) + rim * 1.02
            if f.severity == "large":
                air *= 1.0 - 0.3 * _ramp(dist, e) * side
            tissue *= 1.0 - rim
            line = np.clip(1.0 - np.abs(dist) * (1 / max(0.006, 0.9 * cv.px)), 0.0, 1.0)
            mt += 0.3 * line * lung * side
        elif f.name == "pleural_effusion":
            h = {"small": 0.14, "moderate": 0.3, "large": 0.52}[f.severity]
            h *= frng.uniform(0.9, 1.1)
            lat = np.clip((au - 0.08) * (1 / 0.58), 0.0, 1.0)
            surface = dome_top + _DOME_K - h * (0.5 + 0.5 * lat * np.sqrt(lat))
            fl = np.clip((tv - surface) * (1 / 0.1) + 0.3, 0.0, 1.0)
            fluid = fl * fl * (3 - 2 * fl) * side
            air *= 1.0 - 0.97 * fluid
            tissue *= 1.0 - fluid
            mt += 0.06 * fluid * lung
        elif f.name == "edema":
            k = {"mild": 0.35, "moderate": 0.55, "severe": 0.8}[f.severity] * frng.uniform(0.9, 1.1)
            wing = np.exp(-(((au - 0.2) * 4.2) ** 2) - ((tv - 0.06) * 3.0) ** 2)
            air *= 1.0 - k * wing
            vessel_gain = 1.0 + k
            if cv.px < 0.012:  # Kerley B lines only where pixels resolve them
                kerley = np.clip(np.cos((tv - frng.random()) * 260.0) * 4 - 3, 0.0, 1.0)
                kerley *= _ramp(au - 0.5, 0.05) * _ramp(tv - 0.05, 0.05)
                mt += 0.05 * k * kerley * tissue
        else:
            _focal(f, case, cv, tw, frng, mt, air, tissue, lung)

    # vessel markings fanning out of the hila (none in the outer third), hilar shadows
    hdx, hdy = au - 0.15, tv + 0.02
    r = np.sqrt(hdx * hdx + hdy * hdy)
    ang = np.arctan2(hdy, hdx)
    phase = np.where(tu < 0, np.float32(ph[0]), np.float32(ph[1]))
    ves = np.clip(
        np.cos(ang * 11.0 + phase + 7.0 * r + 0.6 * np.cos(r * 19.0 + ph[2])) * 3 - 2, 0, 1
    )
    ves += 0.7 * np.clip(np.cos(ang * 23.0 - phase + 13.0 * r) * 3 - 2.2, 0, 1)
    taper = np.clip(1.0 - r * 1.7, 0.0, 1.0) * np.clip(r * 12.0 - 0.6, 0.0, 1.0)
    ves *= taper * taper * (0.65 + 0.35 * np.cos(r * 31.0 + ang * 5.0 + ph[3]))
    tex = np.cos(tu * 37.0 + tv * 23.0 + ph[4])  # faint parenchymal texture
    mt += ((0.2 * vessel_gain) * ves + 0.02 * tex) * tissue
    mt += 0.2 * np.clip(1.0 - (hdx * (1 / 0.075)) ** 2 - (hdy * (1 / 0.14)) ** 2, 0.0, 1.0)

    # posterior ribs (up from the spine, then curving down laterally), faint anterior ribs
    s = np.maximum(au, 0.05)
    sp = case.rib_spacing
    top = -0.71 * lh
    t = (tv - top + 0.25 * s - 0.85 * s * s) * (1 / sp)
    fr = t - np.floor(t)
    band = np.minimum(fr, 0.4 - fr) * sp
    rib = np.clip(band * (1 / e), 0.0, 1.0) * np.clip(1.3 - band * (1 / 0.04), 0.7, 1.0)  # cortex
    cage = _ramp(0.72 * lw - au, 0.03) * _ramp(au - 0.06, e)
    rib *= np.clip(np.minimum(t, 10.4 - t) * (1 / 0.3) + 0.5, 0.0, 1.0)
    ta = (tv - top - 0.05 + 0.42 * s - 0.1 * s * s) * (1 / (1.15 * sp))
    fa = ta - np.floor(ta)
    arib = np.clip(np.minimum(fa, 0.45 - fa) * (sp / 0.025), 0.0, 1.0)
    arib *= np.clip(np.minimum(ta, 6.0 - ta) * (1 / 0.3) + 0.5, 0.0, 1.0)
    mt += (0.12 * rib + 0.05 * arib) * cage
    mu[tw] += mt - _AIR * air

    # spine (vertebral bodies, faint behind the heart), trachea, clavicles, gastric bubble
    win = cv.box(-0.08, 0.08, -1.0, 1.0)
    su, sv = u[win], v[win]
    vert = (sv + 0.71) * (1 / (0.9 * sp))
    vf = vert - np.floor(vert)
    body_ = np.clip(np.minimum(vf, 0.8 - vf) * 8.0, 0.0, 1.0)
    spine = _ramp(0.055 - np.abs(su), e) * _ramp(sv + 0.95, e)
    trachea = _ramp(0.03 - np.abs(su), e) * _ramp(-0.05 - sv, e)
    mu[win] += spine * (0.04 + 0.05 * body_) - 0.3 * trachea
    cy0, cy1 = (-0.66, -0.7) if ap else (-0.6, -0.75)
    ax_, ay_, bx_, by_ = 0.06, cy0 * lh, 0.6, cy1 * lh
    win = cv.box(-0.7, 0.7, min(ay_, by_) - 0.08, max(ay_, by_) + 0.08)
    su, sv = np.abs(u[win]), v[win]
    ddx, ddy = bx_ - ax_, by_ - ay_
    tt = np.clip(((su - ax_) * ddx + (sv - ay_) * ddy) * (1 / (ddx * ddx + ddy * ddy)), 0.0, 1.0)
    cdx, cdy = su - ax_ - tt * ddx, sv - ay_ - tt * ddy + 0.025 * np.sin(tt * 6.28)
    mu[win] += 0.2 * _ramp(0.028 - np.sqrt(cdx * cdx + cdy * cdy), e)
    gx, gy = 0.3 * lw, case.dome_left + 0.13
    win = cv.box(gx - 0.1, gx + 0.1, gy - 0.1, gy + 0.1)
    gdx, gdy = (u[win] - gx) * (1 / 0.08), (v[win] - gy) * (1 / 0.045)
    bubble = _ramp(1.0 - np.sqrt(gdx * gdx + gdy * gdy), 0.4)
    mu[win] -= 0.22 * bubble * _ramp(v[win] - (case.dome_left + 0.07), e)

    # film: blackening (1 - exp(-g mu)), a faint exposure gradient, noise, gamma
    g = 1.3 * case.exposure
    img = 1.0 - np.exp(-g * np.maximum(mu, 0.0))
    tilt = 0.04 * (u * float(rng.uniform(-1, 1)) + v * float(rng.uniform(-1, 1)))
    img *= (1.0 + tilt) * (1.0 / (1.0 - np.exp(-g * 1.3)))
    img += 0.015 + case.noise * _noise(img.shape, rng)
    lut = np.rint((np.arange(256) / 255.0) ** case.gamma * 255.0).astype(np.uint8)
    return lut[np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)]


def _focal(
    f: Finding,
    case: Case,
    cv: _Canvas,
    tw: tuple[slice, slice],
    rng: np.random.Generator,
    mt: np.ndarray,
    air: np.ndarray,
    tissue: np.ndarray,
    lung: np.ndarray,
) -> None:
    """Consolidation (patchy blobs, optional air bronchograms) or a nodule/mass, in place."""
    sign = -1.0 if f.side == "right" else 1.0
    dome = case.dome_right if f.side == "right" else case.dome_left
    if f.name == "consolidation":
        radius = {"mild": 0.08, "moderate": 0.115, "severe": 0.155}[f.severity]
        dens = {"mild": 0.6, "moderate": 0.8, "severe": 0.93}[f.severity]
    else:
        radius = rng.uniform(0.028, 0.045) if f.severity == "small" else rng.uniform(0.09, 0.13)
        dens = 0.9
    lw, lh = case.lung_width, case.lung_height
    if f.zone == "upper":
        ux = sign * lw * rng.uniform(0.24, 0.44)
        vy = lh * rng.uniform(-0.42, -0.18) + 0.3 * radius
    elif f.name == "consolidation":  # clipped to the lung: may reach down to the dome
        ux = sign * lw * rng.uniform(0.34, 0.46)
        vy = min(lh * rng.uniform(0.08, 0.26), dome - 0.02)
    else:  # lateral to the heart, above the dome
        ux = sign * lw * rng.uniform(0.38, 0.47)
        vy = min(lh * rng.uniform(0.04, 0.2), dome - 0.05 - radius)
        ux = sign * min(abs(ux), 0.6 * lw - radius)
    ext = 2.6 * radius
    win = _inner(cv.box(ux - ext, ux + ext, vy - ext, vy + ext), tw)
    uu, vv = cv.u[tw][win], cv.v[tw][win]
    du, dv = uu - ux, vv - vy
    if f.name == "consolidation":
        opac = np.zeros_like(uu)
        for _ in range(int(rng.integers(3, 6))):
            bx, by = (float(x) for x in rng.normal(0, 0.55 * radius, 2))
            sig2 = (radius * rng.uniform(0.45, 0.8)) ** 2
            opac += np.exp(-((du - bx) ** 2 + (dv - by) ** 2) * (0.5 / sig2))
        tex = 0.8 + 0.2 * np.cos(uu * rng.uniform(40, 70) + vv * rng.uniform(40, 70))
        opac = np.clip(opac * 1.6 - 0.15, 0.0, 1.0) * tex * lung[win]
        bronch: Any = 0.0
        if case.air_bronchograms:
            ang = np.arctan2(vv + 0.02, np.abs(uu) - 0.15)
            bronch = np.clip(np.cos(ang * 17.0 + rng.uniform(0, 6.3)) * 6 - 5.2, 0.0, 1.0)
            bronch = bronch * np.clip(opac * 2 - 1, 0.0, 1.0)
        air[win] = air[win] * (1.0 - dens * opac) + 0.45 * bronch
        tissue[win] *= 1.0 - opac
        mt[win] += 0.05 * opac
    else:
        ang = np.arctan2(dv, du)
        rad = radius * (1.0 + 0.08 * np.cos(3 * ang + rng.uniform(0, 6.3)))
        opac = _ramp(rad - np.sqrt(du * du + dv * dv), cv.e * 0.8)
        air[win] *= 1.0 - dens * opac
        mt[win] += 0.04 * opac


# --- reports ------------------------------------------------------------------------------------

_OBS = {
    "EC": "Enlarged Cardiomediastinum",
    "CM": "Cardiomegaly",
    "LO": "Lung Opacity",
    "LL": "Lung Lesion",
    "ED": "Edema",
    "CO": "Consolidation",
    "PN": "Pneumonia",
    "AT": "Atelectasis",
    "PX": "Pneumothorax",
    "EF": "Pleural Effusion",
    "PO": "Pleural Other",
    "FX": "Fracture",
    "SD": "Support Devices",
}
Tags = dict[str, int]
Template = tuple[str, Tags]


def _t(text: str, **tags: int) -> Template:
    return text, tags


# normal structures and negations
_HEART_NORMAL = (
    _t("The heart size is normal.", CM=0),
    _t("Heart size is within normal limits.", CM=0),
    _t("Normal heart size.", CM=0),
    _t("The cardiac silhouette is normal in size.", CM=0),
    _t("The cardiomediastinal silhouette is within normal limits.", CM=0, EC=0),
    _t("Normal cardiomediastinal silhouette.", CM=0, EC=0),
    _t("Heart size and mediastinal contours are normal.", CM=0, EC=0),
    _t("The heart is not enlarged.", CM=0),
    _t("Cardiac and mediastinal contours are unremarkable.", CM=0, EC=0),
    _t("No cardiomegaly.", CM=0),
)
_MEDIASTINUM_NORMAL = (
    _t("The mediastinal contours are unremarkable.", EC=0),
    _t("Mediastinal contours are within normal limits.", EC=0),
    _t("Hilar and mediastinal contours are normal.", EC=0),
)
_LUNGS_CLEAR = (
    _t("The lungs are clear.", LO=0, CO=0),
    _t("Lungs are clear bilaterally.", LO=0, CO=0),
    _t("The lungs are well expanded and clear.", LO=0, CO=0),
    _t("There is no focal consolidation.", CO=0),
    _t("No focal consolidation.", CO=0),
    _t("No focal airspace consolidation.", CO=0),
    _t("No focal opacity to suggest pneumonia.", LO=0, PN=0),
    _t("Lungs are clear without consolidation or edema.", LO=0, CO=0, ED=0),
    _t("The lungs are clear. No pulmonary edema.", LO=0, CO=0, ED=0),
    _t("Clear lungs.", LO=0, CO=0),
    _t("The lungs are clear. No suspicious pulmonary nodules.", LO=0, CO=0, LL=0),
    _t("Lungs are clear, without focal consolidation, nodule or mass.", LO=0, CO=0, LL=0),
)
_NO_CONSOLIDATION = (
    _t("No focal consolidation.", CO=0),
    _t("There is no focal consolidation.", CO=0),
    _t("No evidence of pneumonia.", PN=0),
)
_NO_EDEMA = (
    _t("No pulmonary edema.", ED=0),
    _t("There is no pulmonary vascular congestion.", ED=0),
    _t("No evidence of pulmonary edema.", ED=0),
)
_NO_NODULE = (
    _t("No suspicious pulmonary nodules.", LL=0),
    _t("No pulmonary nodule or mass.", LL=0),
)
_NO_PLEURAL = (
    _t("No pleural effusion or pneumothorax.", EF=0, PX=0),
    _t("There is no pleural effusion or pneumothorax.", EF=0, PX=0),
    _t("No effusion or pneumothorax is seen.", EF=0, PX=0),
    _t("There is no pneumothorax or pleural effusion.", EF=0, PX=0),
    _t("The costophrenic angles are sharp. No pneumothorax.", EF=0, PX=0),
    _t("Pleural effusion and pneumothorax are not seen.", EF=0, PX=0),
    _t("No evidence of pleural effusion or pneumothorax.", EF=0, PX=0),
)
_NO_PLEURAL_OR_CONSOLIDATION = (
    _t("No pleural effusion, pneumothorax, or focal consolidation.", EF=0, PX=0, CO=0),
    _t("There is no focal consolidation, pleural effusion or pneumothorax.", EF=0, PX=0, CO=0),
)
_NO_EFFUSION = (
    _t("No pleural effusion.", EF=0),
    _t("There is no pleural effusion.", EF=0),
    _t("The costophrenic angles are sharp.", EF=0),
    _t("No evidence of pleural effusion.", EF=0),
)
_NO_PNEUMOTHORAX = (
    _t("No pneumothorax.", PX=0),
    _t("There is no pneumothorax.", PX=0),
    _t("No evidence of pneumothorax.", PX=0),
    _t("Pneumothorax is not seen.", PX=0),
)
_BONES = (
    _t("No acute osseous abnormality."),
    _t("No displaced rib fractures.", FX=0),
    _t("The visualized osseous structures are unremarkable."),
    _t("Mild degenerative changes of the thoracic spine."),
    _t("No acute fracture is identified.", FX=0),
)
_NORMAL_IMPRESSION = (
    _t("No acute cardiopulmonary process."),
    _t("No acute cardiopulmonary abnormality."),
    _t("No acute intrathoracic process."),
    _t("Normal chest radiograph."),
    _t("No radiographic evidence of acute cardiopulmonary disease."),
)

_SEV_ADVERB = {"mild": "mildly", "moderate": "moderately", "severe": "markedly"}
_CARDIOMEGALY = (
    _t("The heart is {adv} enlarged.", CM=1),
    _t("{Sev} cardiomegaly.", CM=1),
    _t("{Adv} enlarged cardiac silhouette.", CM=1),
    _t("Heart size is {adv} enlarged.", CM=1),
    _t("There is {sev} enlargement of the cardiac silhouette.", CM=1),
    _t("The cardiac silhouette is {adv} enlarged.", CM=1),
)
_CARDIOMEGALY_HEDGED = (
    _t("The heart size is borderline enlarged.", CM=-1),
    _t("Possible mild cardiomegaly.", CM=-1),
    _t("The heart may be mildly enlarged.", CM=-1),
)
_CARDIOMEGALY_IMPRESSION = (
    _t("Cardiomegaly.", CM=1),
    _t("{Sev} cardiomegaly.", CM=1),
    _t("Enlarged heart.", CM=1),
    _t("{Sev} enlargement of the cardiac silhouette.", CM=1),
)
_CARDIOMEGALY_IMPRESSION_HEDGED = (
    _t("Borderline cardiomegaly.", CM=-1),
    _t("Possible mild cardiomegaly.", CM=-1),
)

_EFFUSION = (
    _t("There is a {sev} {side} pleural effusion.", EF=1),
    _t("{Sev} {side} pleural effusion.", EF=1),
    _t("{Side} pleural effusion, {sev} in size.", EF=1),
    _t("A {sev} {side} pleural effusion is present.", EF=1),
)
_EFFUSION_SMALL = (
    _t(
        "Blunting of the {side} costophrenic angle, consistent with a small pleural effusion.", EF=1
    ),
)
_EFFUSION_BIG = (
    _t("{Sev} {side} pleural effusion with adjacent compressive atelectasis.", EF=1, AT=1),
    _t("{Sev} {side} pleural effusion layering along the lateral chest wall.", EF=1),
)
_EFFUSIONS = (
    _t("There are {sev} bilateral pleural effusions.", EF=1),
    _t("{Sev} bilateral pleural effusions.", EF=1),
    _t("Bilateral pleural effusions, {sev} in size.", EF=1),
    _t("{Sev} pleural effusions are present bilaterally.", EF=1),
)
_EFFUSIONS_SMALL = (
    _t("Blunting of both costophrenic angles, consistent with small bilateral effusions.", EF=1),
)
_EFFUSION_HEDGED = (
    _t("Possible small {side} pleural effusion.", EF=-1),
    _t("A small {side} pleural effusion cannot be excluded.", EF=-1),
    _t("Questionable trace {side} pleural effusion.", EF=-1),
)
_EFFUSIONS_HEDGED = (
    _t("Possible small bilateral pleural effusions.", EF=-1),
    _t("Small bilateral pleural effusions cannot be excluded.", EF=-1),
)
_EFFUSION_BUT_NO_PTX = (
    _t("No pneumothorax, but there is a {sev} {side} pleural effusion.", PX=0, EF=1),
)
_EFFUSION_IMPRESSION = (
    _t("{Sev} {side} pleural effusion.", EF=1),
    _t("{Side} pleural effusion.", EF=1),
)
_EFFUSIONS_IMPRESSION = (
    _t("{Sev} bilateral pleural effusions.", EF=1),
    _t("Bilateral pleural effusions.", EF=1),
)
_EFFUSION_IMPRESSION_HEDGED = (
    _t("Possible small {side} pleural effusion.", EF=-1),
    _t("Small {side} pleural effusion is not excluded.", EF=-1),
)
_EFFUSIONS_IMPRESSION_HEDGED = (_t("Possible small bilateral pleural effusions.", EF=-1),)

_PNEUMOTHORAX = {
    "small": (
        _t("There is a small {side} apical pneumothorax.", PX=1),
        _t("Small {side} apical pneumothorax.", PX=1),
        _t("A small {side} pneumothorax is seen at the apex.", PX=1),
        _t("Small {side} apical pneumothorax with the visceral pleural line visible.", PX=1),
    ),
    "moderate": (
        _t("Moderate {side} pneumothorax.", PX=1),
        _t("There is a moderate-sized {side} pneumothorax.", PX=1),
        _t("A moderate {side} pneumothorax is present with a visible visceral pleural line.", PX=1),
    ),
    "large": (
        _t("Large {side} pneumothorax with partial collapse of the {side} lung.", PX=1),
        _t("There is a large {side} pneumothorax.", PX=1),
        _t(
            "Large {side} pneumothorax, the lung edge is displaced well away from the chest wall.",
            PX=1,
        ),
    ),
}
_PNEUMOTHORAX_HEDGED = (
    _t("Possible tiny {side} apical pneumothorax.", PX=-1),
    _t("A small {side} apical pneumothorax cannot be excluded.", PX=-1),
    _t("Questionable small {side} apical pneumothorax.", PX=-1),
)
_PNEUMOTHORAX_IMPRESSION = (
    _t("{Sev} {side} pneumothorax.", PX=1),
    _t("{Side} pneumothorax, {sev}.", PX=1),
    _t("{Sev} {side} pneumothorax. Findings were discussed with the referring clinician.", PX=1),
)
_PNEUMOTHORAX_IMPRESSION_HEDGED = (
    _t("Possible small {side} apical pneumothorax; recommend repeat radiograph.", PX=-1),
    _t("Small {side} pneumothorax cannot be excluded.", PX=-1),
)

_CONSOLIDATION = {
    "mild": (
        _t("Patchy consolidation in the {lobe}.", CO=1),
        _t("Mild {lobe} consolidation.", CO=1),
        _t("Subtle patchy airspace opacity in the {lobe}.", LO=1),
    ),
    "moderate": (
        _t("There is consolidation in the {lobe}.", CO=1),
        _t("{Lobe} consolidation.", CO=1),
        _t("Focal airspace consolidation in the {lobe}.", CO=1),
        _t("Consolidation is seen in the {lobe}.", CO=1),
        _t("{Lobe} opacity consistent with pneumonia.", LO=1, PN=1),
    ),
    "severe": (
        _t("Dense consolidation of the {lobe}.", CO=1),
        _t("Extensive {lobe} consolidation.", CO=1),
        _t("Dense {lobe} airspace opacity.", LO=1),
    ),
}
_AIR_BRONCHOGRAMS = (
    _t("Air bronchograms are present within the consolidation.", CO=1),
    _t("There are air bronchograms within the area of consolidation.", CO=1),
)
_CONSOLIDATION_HEDGED_LOWER = (
    _t(
        "Patchy opacity at the {side} base may represent atelectasis or early pneumonia.",
        LO=1,
        AT=-1,
        PN=-1,
    ),
)
_CONSOLIDATION_HEDGED = (
    _t("Subtle {side} {zone} zone opacity, possibly early pneumonia.", LO=1, PN=-1),
    _t("Possible {lobe} consolidation.", CO=-1),
    _t("Faint {lobe} opacity, which could reflect consolidation.", LO=1, CO=-1),
)
_CONSOLIDATION_IMPRESSION = (
    _t("{Lobe} pneumonia.", PN=1),
    _t("{Lobe} consolidation, consistent with pneumonia.", CO=1, PN=1),
    _t("{Sev} {lobe} consolidation.", CO=1),
    _t("Findings consistent with {lobe} pneumonia.", PN=1),
    _t("{Lobe} consolidation concerning for pneumonia.", CO=1, PN=-1),
)
_CONSOLIDATION_IMPRESSION_HEDGED_LOWER = (
    _t("{Side} basilar opacity, atelectasis versus pneumonia.", LO=1, AT=-1, PN=-1),
)
_CONSOLIDATION_IMPRESSION_HEDGED = (
    _t("Possible early {lobe} pneumonia.", PN=-1),
    _t("Findings may represent early {lobe} pneumonia.", PN=-1),
)

_EDEMA = {
    "mild": (
        _t("Mild pulmonary vascular congestion.", ED=1),
        _t("Mild interstitial edema.", ED=1),
        _t("There is mild pulmonary edema.", ED=1),
        _t("Mild vascular congestion and interstitial edema.", ED=1),
    ),
    "moderate": (
        _t("Moderate pulmonary edema.", ED=1),
        _t(
            "Perihilar haziness and increased interstitial markings consistent with moderate "
            "pulmonary edema.",
            LO=1,
            ED=1,
        ),
        _t("There is moderate interstitial pulmonary edema.", ED=1),
        _t("Bilateral perihilar opacities consistent with moderate pulmonary edema.", LO=1, ED=1),
    ),
    "severe": (
        _t("Severe pulmonary edema.", ED=1),
        _t(
            "Diffuse bilateral perihilar airspace opacities, consistent with severe pulmonary "
            "edema.",
            LO=1,
            ED=1,
        ),
        _t("Marked alveolar and interstitial edema.", ED=1),
    ),
}
_EDEMA_HEDGED = (
    _t("Possible mild interstitial edema.", ED=-1),
    _t("Hazy perihilar opacities may reflect mild pulmonary edema.", LO=1, ED=-1),
)
_EDEMA_IMPRESSION = (
    _t("{Sev} pulmonary edema.", ED=1),
    _t("{Sev} congestive heart failure.", ED=1),
    _t("Findings consistent with {sev} pulmonary edema.", ED=1),
)
_EDEMA_IMPRESSION_HEDGED = (
    _t("Possible mild pulmonary edema.", ED=-1),
    _t("Mild edema is not excluded.", ED=-1),
)
_CHF_IMPRESSION = (
    _t(
        "Cardiomegaly with {sev} pulmonary edema and {effusion} pleural effusions, consistent "
        "with congestive heart failure.",
        CM=1,
        ED=1,
        EF=1,
    ),
)

_NODULE = (
    _t("There is a {mm} mm nodule in the {side} {zone} lung.", LL=1),
    _t("A {mm} mm {side} {zone} lobe pulmonary nodule.", LL=1),
    _t("Rounded nodular opacity in the {side} {zone} lung zone, measuring {mm} mm.", LL=1, LO=1),
    _t("{Side} {zone} lung nodule measuring approximately {mm} mm.", LL=1),
)
_MASS = (
    _t("There is a {cm} cm mass in the {side} {zone} lobe.", LL=1),
    _t("Large {side} {zone} lung mass measuring {cm} cm.", LL=1),
    _t("A {cm} cm rounded mass projects over the {side} {zone} lung.", LL=1),
    _t("{Side} {zone} lobe mass, concerning for malignancy.", LL=1),
)
_NODULE_HEDGED = (
    _t("Questionable {side} {zone} lung nodule.", LL=-1),
    _t("Possible small nodule in the {side} {zone} lung.", LL=-1),
)
_NODULE_IMPRESSION = (
    _t("{Side} {zone} lung nodule; recommend chest CT for further characterization.", LL=1),
    _t("{mm} mm {side} {zone} pulmonary nodule.", LL=1),
)
_MASS_IMPRESSION = (
    _t("{Side} {zone} lung mass, concerning for malignancy.", LL=1),
    _t("{cm} cm {side} {zone} lobe mass; recommend CT.", LL=1),
)
_NODULE_IMPRESSION_HEDGED = (_t("Possible {side} {zone} lung nodule; consider chest CT.", LL=-1),)

_EXAMINATION = {"PA": "EXAMINATION: CHEST (PA AND LAT)", "AP": "EXAMINATION: CHEST (PORTABLE AP)"}
_INDICATIONS = (
    "cough and fever, evaluate for pneumonia",
    "shortness of breath",
    "chest pain",
    "history of CHF, evaluate for pulmonary edema",
    "fall, rule out rib fracture",
    "follow-up of pleural effusion",
)


class _Writer:
    """Collects sentences and their tags."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.sentences: list[str] = []
        self.tags: list[tuple[str, int]] = []

    def add(self, options: Sequence[Template], **fmt: Any) -> None:
        text, tags = options[int(self.rng.integers(len(options)))]
        self.sentences.append(_fill(text, fmt))
        self.tags.extend((_OBS[k], v) for k, v in tags.items())

    def text(self) -> str:
        return " ".join(self.sentences)


def _fill(text: str, fmt: Mapping[str, Any]) -> str:
    caps = {k[:1].upper() + k[1:]: str(v)[:1].upper() + str(v)[1:] for k, v in fmt.items()}
    return text.format(**fmt, **caps)


def _fmt(f: Finding, rng: np.random.Generator) -> dict[str, Any]:
    fmt: dict[str, Any] = {"sev": f.severity, "side": f.side or "", "zone": f.zone or ""}
    fmt["adv"] = _SEV_ADVERB.get(f.severity, "")
    if f.zone:
        fmt["lobe"] = f"{f.side} {f.zone} lobe"
    fmt["mm"] = int(rng.integers(6, 15))
    fmt["cm"] = f"{rng.uniform(3.0, 6.5):.1f}"
    return fmt


def _hedgeable(f: Finding) -> bool:
    return f.severity in ("mild", "small")


def write_report(
    case: Case, rng: np.random.Generator, *, hedge: float = 0.3
) -> tuple[str, str, np.ndarray]:
    """(FINDINGS text, IMPRESSION text, labels int8[14]) for `case`.

    The labels are what the text says (each template's tags, aggregated as CheXpert does).
    """
    hedged = {f.name for f in case.findings if _hedgeable(f) and rng.random() < hedge}
    fmts = {f.name: _fmt(f, rng) for f in case.findings}
    has = {f.name: f for f in case.findings}
    fw, iw = _Writer(rng), _Writer(rng)

    # heart and mediastinum
    cm = has.get("cardiomegaly")
    if cm:
        fw.add(_CARDIOMEGALY_HEDGED if "cardiomegaly" in hedged else _CARDIOMEGALY, **fmts[cm.name])
        if rng.random() < 0.3:
            fw.add(_MEDIASTINUM_NORMAL)
    elif rng.random() < 0.9:
        fw.add(_HEART_NORMAL)

    # lungs
    lung_findings = [has[n] for n in ("consolidation", "edema", "lung_lesion") if n in has]
    for f in lung_findings:
        fmt, h = fmts[f.name], f.name in hedged
        if f.name == "consolidation":
            if h:
                lower = _CONSOLIDATION_HEDGED_LOWER if f.zone == "lower" else ()
                fw.add(_CONSOLIDATION_HEDGED + lower, **fmt)
            else:
                fw.add(_CONSOLIDATION[f.severity], **fmt)
                if case.air_bronchograms:
                    fw.add(_AIR_BRONCHOGRAMS)
        elif f.name == "edema":
            fw.add(_EDEMA_HEDGED if h else _EDEMA[f.severity], **fmt)
        elif f.severity == "large":
            fw.add(_MASS, **fmt)
        else:
            fw.add(_NODULE_HEDGED if h else _NODULE, **fmt)
    eff, ptx = has.get("pleural_effusion"), has.get("pneumothorax")
    pleural_done = False
    if not lung_findings:
        if not eff and not ptx and rng.random() < 0.2:
            fw.add(_NO_PLEURAL_OR_CONSOLIDATION)
            pleural_done = True
        elif rng.random() < 0.92:
            fw.add(_LUNGS_CLEAR)
    else:
        if "consolidation" not in has and rng.random() < 0.4:
            fw.add(_NO_CONSOLIDATION)
        if "edema" not in has and rng.random() < 0.3:
            fw.add(_NO_EDEMA)
        if "lung_lesion" not in has and rng.random() < 0.15:
            fw.add(_NO_NODULE)

    # pleura
    if not pleural_done:
        if eff:
            fmt, h = fmts[eff.name], eff.name in hedged
            bilateral = eff.side == "bilateral"
            if h:
                fw.add(_EFFUSIONS_HEDGED if bilateral else _EFFUSION_HEDGED, **fmt)
            elif not ptx and not bilateral and rng.random() < 0.2:
                fw.add(_EFFUSION_BUT_NO_PTX, **fmt)
                pleural_done = True
            else:
                options = _EFFUSIONS if bilateral else _EFFUSION
                if eff.severity == "small":
                    options += _EFFUSIONS_SMALL if bilateral else _EFFUSION_SMALL
                elif not bilateral:
                    options += _EFFUSION_BIG
                fw.add(options, **fmt)
        if ptx:
            fmt, h = fmts[ptx.name], ptx.name in hedged
            fw.add(_PNEUMOTHORAX_HEDGED if h else _PNEUMOTHORAX[ptx.severity], **fmt)
        if not pleural_done:
            if not eff and not ptx:
                if rng.random() < 0.95:
                    fw.add(_NO_PLEURAL)
            elif not eff:
                fw.add(_NO_EFFUSION)
            elif not ptx and rng.random() < 0.8:
                fw.add(_NO_PNEUMOTHORAX)
    if rng.random() < 0.35:
        fw.add(_BONES)

    # impression
    if not case.findings:
        iw.add(_NORMAL_IMPRESSION)
    else:
        chf = (
            cm
            and eff
            and eff.side == "bilateral"
            and "edema" in has
            and not hedged & {"cardiomegaly", "edema", "pleural_effusion"}
            and rng.random() < 0.5
        )
        if chf:
            iw.add(_CHF_IMPRESSION, sev=has["edema"].severity, effusion=eff.severity)
        for f in case.findings:
            if chf and f.name in ("cardiomegaly", "edema", "pleural_effusion"):
                continue
            iw.add(_impression_options(f, f.name in hedged), **fmts[f.name])
        if not ptx and rng.random() < 0.2:
            iw.add(_NO_PNEUMOTHORAX)
    labels = labeler.aggregate(fw.tags + iw.tags)
    return fw.text(), iw.text(), labels


def _impression_options(f: Finding, hedged: bool) -> tuple[Template, ...]:
    bilateral = f.side == "bilateral"
    table: dict[str, tuple[tuple[Template, ...], tuple[Template, ...]]] = {
        "cardiomegaly": (_CARDIOMEGALY_IMPRESSION, _CARDIOMEGALY_IMPRESSION_HEDGED),
        "pleural_effusion": (
            _EFFUSIONS_IMPRESSION if bilateral else _EFFUSION_IMPRESSION,
            _EFFUSIONS_IMPRESSION_HEDGED if bilateral else _EFFUSION_IMPRESSION_HEDGED,
        ),
        "pneumothorax": (_PNEUMOTHORAX_IMPRESSION, _PNEUMOTHORAX_IMPRESSION_HEDGED),
        "consolidation": (
            _CONSOLIDATION_IMPRESSION,
            _CONSOLIDATION_IMPRESSION_HEDGED
            + (_CONSOLIDATION_IMPRESSION_HEDGED_LOWER if f.zone == "lower" else ()),
        ),
        "edema": (_EDEMA_IMPRESSION, _EDEMA_IMPRESSION_HEDGED),
        "lung_lesion": (
            _MASS_IMPRESSION if f.severity == "large" else _NODULE_IMPRESSION,
            _NODULE_IMPRESSION_HEDGED,
        ),
    }
    return table[f.name][1 if hedged else 0]


def full_report(findings: str, impression: str, rng: np.random.Generator, view: str = "PA") -> str:
    """The whole report: optional EXAMINATION/INDICATION/COMPARISON, then the two sections."""
    parts = []
    if rng.random() < 0.3:
        parts.append(_EXAMINATION[view])
    if rng.random() < 0.25:
        who = "man" if rng.random() < 0.5 else "woman"
        parts.append(f"INDICATION: ___-year-old {who} with {_choice(rng, _INDICATIONS)}.")
    if rng.random() < 0.2:
        parts.append("COMPARISON: None." if rng.random() < 0.5 else "COMPARISON: ___.")
    parts.append(f"FINDINGS: {findings}")
    parts.append(f"IMPRESSION: {impression}")
    return "\n\n".join(parts)


# --- records ------------------------------------------------------------------------------------

_PARTITIONS = ((3,), (2, 1), (1, 2), (1, 1, 1))
_PARTITION_P = (0.3, 0.2, 0.2, 0.3)


def _subject(index: int, seed: int) -> tuple[int, int, int]:
    """(first index of the subject, number of its studies, position of `index` among them)."""
    block = index // 3
    parts = _PARTITIONS[int(np.random.default_rng([seed, block, 7]).choice(4, p=_PARTITION_P))]
    pos, start = index % 3, block * 3
    for n in parts:
        if pos < n:
            return start, n, pos
        pos -= n
        start += n
    raise AssertionError("unreachable")


def generate(
    index: int, *, seed: int = 0, resolution: int = 256, sampler: CaseSampler | None = None
) -> dict[str, Any]:
    """Record `index` of the phantom data set `seed` (deterministic in (seed, index))."""
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be >= 0, got index={index}, seed={seed}")
    sampler = sampler or CaseSampler()
    first, n_studies, pos = _subject(index, seed)
    srng = np.random.default_rng([seed, first, 1])
    anatomy = sample_anatomy(srng)
    base = datetime.datetime(2012, 1, 1) + datetime.timedelta(days=int(srng.integers(0, 8 * 365)))
    days = [0] + sorted(int(d) for d in srng.choice(np.arange(30, 1500), n_studies - 1, False))
    order = srng.permutation(n_studies)
    case_rng = np.random.default_rng([seed, index, 2])
    when = base + datetime.timedelta(
        days=days[int(order[pos])], seconds=int(case_rng.integers(6 * 3600, 22 * 3600))
    )
    case = sample_case(case_rng, sampler, anatomy=anatomy)
    image = render(case, resolution, np.random.default_rng([seed, index, 3]))
    report_rng = np.random.default_rng([seed, index, 4])
    findings, impression, labels = write_report(case, report_rng, hedge=sampler.hedge)
    details = {
        "findings": [dataclasses.asdict(f) for f in case.findings],
        "ctr": round(cardiothoracic_ratio(case), 3),
        "view": case.view,
    }
    return {
        "id": f"phantom-{seed}-{index:07d}",
        "subject_id": f"phantom-{seed}-p{first:07d}",
        "study_id": f"phantom-{seed}-s{index:07d}",
        "view": case.view,
        "study_datetime": when.strftime("%Y%m%dT%H%M%S"),
        "findings": findings,
        "impression": impression,
        "report": full_report(findings, impression, report_rng, case.view),
        "labels": labels,
        "details": json.dumps(details, sort_keys=True),
        "image": image,
    }


class PhantomImageSource:
    """Grain random-access source of phantom films with the paper's six classes as labels.

    Record i is `generate(offset + i, seed=seed)`: image float32 [res, res, 3] in [-1, 1]
    (`x / 127.5 - 1`, grey repeated, as `images.preprocess`), labels float32 [6] over
    `labeler.PAPER_CLASSES`, 1.0 where the report's label is positive, else 0.0 (uncertain
    counts as 0, "U-zeros").
    """

    num_labels = NUM_LABELS

    def __init__(
        self,
        size: int,
        resolution: int,
        *,
        seed: int = 0,
        offset: int = 0,
        sampler: CaseSampler | None = None,
    ):
        if size < 0 or offset < 0:
            raise ValueError(f"size and offset must be >= 0, got {size}, {offset}")
        self.size, self.resolution, self.seed, self.offset = size, resolution, seed, offset
        self.sampler = sampler

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        if not 0 <= i < self.size:
            raise IndexError(i)
        r = generate(
            self.offset + i, seed=self.seed, resolution=self.resolution, sampler=self.sampler
        )
        grey = r["image"].astype(np.float32) / np.float32(127.5) - np.float32(1.0)
        paper = labeler.paper_labels(r["labels"])
        return {
            "id": r["id"],
            "image": np.repeat(grey[:, :, None], 3, axis=2),
            "labels": (paper == labeler.POSITIVE).astype(np.float32),
        }
