"""Film metrics: SSIM, MS-SSIM, and FID on torchxrayvision DenseNet-121 features.

SSIM and MS-SSIM are reimplemented (numpy, float64) from the algorithms of `pytorch-msssim`
1.0.0 (github.com/VainF/pytorch-msssim, Wang et al. 2003/2004), not copied from it, so that
our figures are the ones that package gives; `tests/test_film_metrics.py` checks agreement
with its `ssim` and `ms_ssim` to 1e-5 on random images:

- SSIM: an 11-tap Gaussian window (sigma 1.5, normalised to sum 1) applied separably with no
  padding ("valid"; the map is (H - 10) x (W - 10)); K1 = 0.01, K2 = 0.03, C1 = (K1 L)^2,
  C2 = (K2 L)^2 with L the data range; local (co)variances are E[xy] - E[x]E[y] (no n/(n-1)
  correction); SSIM = mean over the map of l * cs, per channel, then averaged over channels.
- MS-SSIM: at each of 5 scales the mean contrast-structure term cs (clamped at 0), then a 2x2
  average pool (odd sides padded with one zero on each side, the zero counted in the mean, as
  `F.avg_pool2d(padding=side % 2)` does); at the last scale the full SSIM (clamped at 0);
  MS-SSIM = prod_j cs_j^w_j * ssim_5^w_5 with Wang et al.'s weights `MS_SSIM_WEIGHTS`, per
  channel, then averaged over channels.

Film size: 5 scales need a shortest side over (11 - 1) * 2^4 = 160 px (pytorch-msssim asserts
it). Smaller films get fewer scales (`ms_ssim_scales`): the most m with side > 10 * 2^(m-1),
weighted by the first m weights renormalised to sum 1 (what pytorch-msssim computes when
passed those weights, apart from its size assertion); 64 px demo films get 3, films under
11 px none (`ms_ssim` raises, the evaluation reports the figure as skipped with the reason).

FID on torchxrayvision features: LLM-CXR's FID is computed on the 1024-d pooled features
("txv-all-1024") of `xrv.models.DenseNet(weights="densenet121-res224-all")`. `load_xrv` reads
such weights from a state-dict file (`convert/torchxrayvision.py` says how to write one from
the released model); the films go through xrv's preprocessing as `models.densenet.
xrv_preprocess` implements it (one channel, center crop, antialiased bilinear resize to 224,
pixels scaled to [-1024, 1024]) and the features are ReLU + global average pooling of the
last feature map (xrv's `features2`), before the classifier; the distance is
`metrics.fid_from_features` (exact matrix square root).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

WIN_SIZE = 11
WIN_SIGMA = 1.5
K1, K2 = 0.01, 0.03
# Wang, Simoncelli & Bovik (2003), the exponents of scales 1..5 (pytorch-msssim's default).
MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
DATA_RANGE = 2.0  # our films are in [-1, 1]


def gaussian_window(size: int = WIN_SIZE, sigma: float = WIN_SIGMA) -> np.ndarray:
    """The 1-D Gaussian taps centred on size // 2, summing to 1."""
    x = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def _as_nhwc(x: np.ndarray) -> np.ndarray:
    """Films [N, H, W] or [N, H, W, C] -> float64 [N, H, W, C]."""
    a = np.asarray(x, np.float64)
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4:
        raise ValueError(f"expected films [N, H, W] or [N, H, W, C], got shape {a.shape}")
    return a


def _filter(x: np.ndarray, win: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation over H then W of [N, H, W, C] (the window is symmetric, so
    correlation and convolution agree)."""
    k = len(win)
    n = x.shape[1] - k + 1
    h = win[0] * x[:, :n]
    for t in range(1, k):
        h += win[t] * x[:, t : t + n]
    n = x.shape[2] - k + 1
    out = win[0] * h[:, :, :n]
    for t in range(1, k):
        out += win[t] * h[:, :, t : t + n]
    return out


def _ssim_cs(
    a: np.ndarray, b: np.ndarray, data_range: float, win: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per film and channel ([N, C]): the mean SSIM map and the mean contrast-structure map."""
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mu_a, mu_b = _filter(a, win), _filter(b, win)
    var_a = _filter(a * a, win) - mu_a**2
    var_b = _filter(b * b, win) - mu_b**2
    cov = _filter(a * b, win) - mu_a * mu_b
    cs_map = (2 * cov + c2) / (var_a + var_b + c2)
    ssim_map = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1) * cs_map
    return ssim_map.mean(axis=(1, 2)), cs_map.mean(axis=(1, 2))


def _check(a: np.ndarray, b: np.ndarray, win_size: int) -> None:
    if a.shape != b.shape:
        raise ValueError(f"films differ in shape: {a.shape} and {b.shape}")
    if min(a.shape[1:3]) < win_size:
        raise ValueError(f"films of {a.shape[1:3]} px are smaller than the {win_size}-px window")


def ssim(
    a: np.ndarray,
    b: np.ndarray,
    data_range: float = DATA_RANGE,
    *,
    win_size: int = WIN_SIZE,
    win_sigma: float = WIN_SIGMA,
) -> np.ndarray:
    """[N] SSIM of film pairs (pytorch-msssim's `ssim(..., size_average=False)` averaged over
    channels; not clamped at 0). Films at least `win_size` px per side."""
    a, b = _as_nhwc(a), _as_nhwc(b)
    _check(a, b, win_size)
    s, _ = _ssim_cs(a, b, data_range, gaussian_window(win_size, win_sigma))
    return s.mean(axis=1)


def ms_ssim_scales(height: int, width: int, win_size: int = WIN_SIZE) -> int:
    """How many MS-SSIM scales (at most 5) a film of this size allows: the most m with the
    shortest side > (win_size - 1) * 2^(m - 1), pytorch-msssim's condition (0: too small)."""
    side = min(height, width)
    m = 0
    while m < len(MS_SSIM_WEIGHTS) and side > (win_size - 1) * 2**m:
        m += 1
    return m


def ms_ssim_weights(scales: int) -> tuple[float, ...]:
    """The first `scales` of Wang et al.'s weights, renormalised to sum 1 (all 5 as published)."""
    if not 1 <= scales <= len(MS_SSIM_WEIGHTS):
        raise ValueError(f"MS-SSIM needs 1..{len(MS_SSIM_WEIGHTS)} scales, got {scales}")
    w = np.asarray(MS_SSIM_WEIGHTS[:scales])
    return tuple((w / w.sum()).tolist()) if scales < len(MS_SSIM_WEIGHTS) else MS_SSIM_WEIGHTS


def _avg_pool2(x: np.ndarray) -> np.ndarray:
    """2x2 mean pooling with stride 2 of [N, H, W, C]; an odd side is padded with one zero on
    each side, the zeros counted (torch's avg_pool2d with padding = side % 2)."""
    ph, pw = x.shape[1] % 2, x.shape[2] % 2
    x = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    h, w = x.shape[1] // 2, x.shape[2] // 2
    x = x[:, : 2 * h, : 2 * w]
    return x.reshape(x.shape[0], h, 2, w, 2, x.shape[3]).mean(axis=(2, 4))


def ms_ssim(
    a: np.ndarray,
    b: np.ndarray,
    data_range: float = DATA_RANGE,
    *,
    scales: int | None = None,
    win_size: int = WIN_SIZE,
    win_sigma: float = WIN_SIGMA,
) -> np.ndarray:
    """[N] MS-SSIM of film pairs, as pytorch-msssim's `ms_ssim(..., size_average=False)`
    averaged over channels. `scales`: default the most the size allows (`ms_ssim_scales`),
    with `ms_ssim_weights(scales)`; raises for films too small for one scale."""
    a, b = _as_nhwc(a), _as_nhwc(b)
    _check(a, b, win_size)
    most = ms_ssim_scales(a.shape[1], a.shape[2], win_size)
    scales = most if scales is None else scales
    if not 1 <= scales <= most:
        raise ValueError(f"films of {a.shape[1:3]} px allow 1..{most} MS-SSIM scales, not {scales}")
    weights = ms_ssim_weights(scales)
    win = gaussian_window(win_size, win_sigma)
    out = np.ones(a.shape[0:1] + a.shape[3:4])
    for j, w in enumerate(weights):
        s, cs = _ssim_cs(a, b, data_range, win)
        if j < scales - 1:
            out *= np.maximum(cs, 0.0) ** w
            a, b = _avg_pool2(a), _avg_pool2(b)
        else:
            out *= np.maximum(s, 0.0) ** w
    return out.mean(axis=1)


def batched(
    fn: Callable[..., np.ndarray], a: np.ndarray, b: np.ndarray, batch_size: int = 64, **kwargs: Any
) -> np.ndarray:
    """`fn(a, b)` (`ssim`, `ms_ssim`) in chunks of films, to bound the float64 working memory."""
    parts = [
        fn(a[s : s + batch_size], b[s : s + batch_size], **kwargs)
        for s in range(0, len(a), batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros(0)


def same_report_pairs(num_films: int) -> list[tuple[int, int]]:
    """All unordered pairs (i < j) of the k films generated from one report."""
    return [(i, j) for i in range(num_films) for j in range(i + 1, num_films)]


def pairwise_ms_ssim(films: np.ndarray, **kwargs: Any) -> np.ndarray:
    """[N] mean MS-SSIM over the pairs of the k films of each item, films [N, k, H, W, C]
    (k >= 2): how alike the films generated from one report are (1: identical)."""
    films = np.asarray(films)
    pairs = same_report_pairs(films.shape[1])
    if not pairs:
        raise ValueError("pairwise MS-SSIM needs at least 2 films per item")
    got = [batched(ms_ssim, films[:, i], films[:, j], **kwargs) for i, j in pairs]
    return np.mean(got, axis=0)


def load_xrv(
    path: str | os.PathLike, preset: str = "densenet121-xrv", *, dtype: str = "float32"
) -> Any:
    """Our DenseNet holding torchxrayvision weights from a state-dict file (see
    `convert/torchxrayvision.py` for converting the released whole-model `.pt` files)."""
    from llmcxr_jax.convert.torchxrayvision import import_xrv
    from llmcxr_jax.models.densenet import get_preset

    return import_xrv(path, get_preset(preset, dtype=dtype))


def xrv_features(model: Any, films: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """[N, 1024] pooled features (before the classifier) of films [N, H, W, C] in [-1, 1],
    preprocessed as xrv does (`densenet.xrv_preprocess`), float64."""
    from llmcxr_jax.eval.evaluate import classify

    _, feats = classify(model, np.asarray(films, np.float32), batch_size)
    return feats.astype(np.float64)


def fid_xrv(model: Any, generated: np.ndarray, real: np.ndarray) -> float:
    """FID between xrv features of generated [N, H, W, C] and real [M, H, W, C] films."""
    from llmcxr_jax.eval import metrics

    return metrics.fid_from_features(xrv_features(model, generated), xrv_features(model, real))
