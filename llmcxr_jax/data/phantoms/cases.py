"""Phantom cases: findings, the anatomy and exposure of one film, and how cases are drawn.

A `Case` is everything the film (`render.py`) and the report (`reports.py`) are made from: its
`Finding`s (name, side, zone, severity) and the patient's build, positioning and exposure.
`sample_case` draws one (`CaseSampler`: prevalences, the CHF cluster, hedging, AP share);
`make_case` builds one with given findings, for tests and figures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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


def choice(rng: np.random.Generator, options: Sequence[Any], p: Sequence[float] | None = None):
    return options[int(rng.choice(len(options), p=p))]


def random_finding(
    name: str, rng: np.random.Generator, *, side: str | None = None, severity: str | None = None
) -> Finding:
    """A finding with random side, zone and severity (unless given)."""
    sev_p = {2: (0.65, 0.35), 3: (0.45, 0.35, 0.2)}[len(SEVERITIES[name])]
    if severity is None:
        severity = choice(rng, SEVERITIES[name], sev_p)
    if side is None and name in SIDES:
        side = choice(rng, SIDES[name], (0.35, 0.35, 0.3) if len(SIDES[name]) == 3 else None)
    zone = None
    if name == "consolidation":
        zone = choice(rng, ZONES, (0.3, 0.7))
    elif name == "lung_lesion":
        zone = choice(rng, ZONES, (0.6, 0.4))
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
