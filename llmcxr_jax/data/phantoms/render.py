"""The film of a phantom case (numpy only, a few ms at 256 px).

An X-ray-like attenuation sum (bright = dense) of the body's soft tissue, two air-filled lungs
with vessel markings fanning from the hila, posterior and anterior ribs, spine, clavicles,
trachea, heart (mostly on the patient's left = the IMAGE RIGHT, radiological convention),
hemidiaphragm domes (the right one higher) and a gastric bubble, then exposure, gamma and noise.
Each case varies in body size, rotation, offset, inspiration, heart size, rib spacing, exposure
and noise; a patient's studies share their build. Findings:

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
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llmcxr_jax.data.phantoms.cases import FINDING_NAMES, Case, Finding, cardiothoracic_ratio

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
