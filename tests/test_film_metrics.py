"""Film metrics against their references: SSIM and MS-SSIM against pytorch-msssim 1.0.0 and
hand-computed cases, the scale rule for small films, and the torchxrayvision-feature FID end
to end (a tiny random DenseNet written in xrv's state-dict layout, read back by `load_xrv`,
against the PyTorch reference network of test_densenet.py)."""

import numpy as np
import pytest
import pytorch_msssim  # the test extra's reference
import torch

from llmcxr_jax.eval import evaluate, film_metrics, metrics
from llmcxr_jax.models.densenet import PRESETS

F = torch.nn.functional


def _pair(shape, seed=0, noise=0.3):
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1, 1, shape)
    return a, np.clip(a + rng.normal(0, noise, shape), -1, 1)


def _t(x):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


# odd sides (pooling pads), non-square, several channels, both dtypes of the reference
SHAPES = [(3, 161, 170, 1), (2, 192, 192, 3), (2, 200, 163, 2)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_ms_ssim_and_ssim_match_pytorch_msssim(shape, dtype):
    a, b = _pair(shape, seed=shape[1])
    ta, tb = _t(a).to(getattr(torch, dtype)), _t(b).to(getattr(torch, dtype))
    kw = dict(data_range=2.0, size_average=False)
    want_ms = pytorch_msssim.ms_ssim(ta, tb, **kw).double().numpy()
    want_s = pytorch_msssim.ssim(ta, tb, **kw).double().numpy()
    got_ms = film_metrics.ms_ssim(a, b)
    got_s = film_metrics.ssim(a, b)
    np.testing.assert_allclose(got_ms, want_ms, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got_s, want_s, rtol=0, atol=1e-5)
    assert got_ms.min() > 0.0 and got_ms.max() < 1.0  # not a trivial 0 or 1
    # another data range changes C1, C2 and so the figure
    want = pytorch_msssim.ms_ssim(ta, tb, data_range=1.0, size_average=False).double().numpy()
    np.testing.assert_allclose(film_metrics.ms_ssim(a, b, 1.0), want, rtol=0, atol=1e-5)


def test_fewer_scales_are_pytorch_msssim_with_the_first_weights_renormalised():
    a, b = _pair((2, 176, 168, 1), seed=5)
    for m in (1, 2, 3, 4):
        w = film_metrics.ms_ssim_weights(m)
        assert sum(w) == pytest.approx(1.0) and len(w) == m
        want = pytorch_msssim.ms_ssim(_t(a), _t(b), data_range=2.0, weights=list(w))
        got = film_metrics.ms_ssim(a, b, scales=m).mean()
        assert got == pytest.approx(float(want), abs=1e-5)
    assert film_metrics.ms_ssim_weights(5) == film_metrics.MS_SSIM_WEIGHTS


def test_scale_rule_for_small_films():
    # pytorch-msssim: 5 scales need a shortest side > 160
    assert film_metrics.ms_ssim_scales(161, 300) == 5
    assert film_metrics.ms_ssim_scales(160, 160) == 4
    assert film_metrics.ms_ssim_scales(256, 256) == 5
    assert film_metrics.ms_ssim_scales(64, 64) == 3  # the demo's films
    assert film_metrics.ms_ssim_scales(32, 32) == 2
    assert film_metrics.ms_ssim_scales(11, 11) == 1
    assert film_metrics.ms_ssim_scales(10, 40) == 0
    a, b = _pair((1, 160, 160, 1))
    with pytest.raises(AssertionError):  # the reference refuses these films outright
        pytorch_msssim.ms_ssim(_t(a), _t(b), data_range=2.0)
    assert film_metrics.ms_ssim(a, b) == pytest.approx(film_metrics.ms_ssim(a, b, scales=4))
    with pytest.raises(ValueError, match="allow 1..4"):
        film_metrics.ms_ssim(a, b, scales=5)
    with pytest.raises(ValueError, match="window"):
        film_metrics.ms_ssim(np.zeros((1, 10, 10)), np.zeros((1, 10, 10)))
    with pytest.raises(ValueError, match="shape"):
        film_metrics.ssim(np.zeros((1, 20, 20)), np.zeros((1, 20, 21)))


def test_hand_computed_cases():
    a, _ = _pair((2, 176, 176, 1), seed=2)
    np.testing.assert_allclose(film_metrics.ms_ssim(a, a), 1.0, atol=1e-12)
    np.testing.assert_allclose(film_metrics.ssim(a, a), 1.0, atol=1e-12)
    # constant films 0.5 and 0.25: no variance, so cs = 1 and SSIM = the luminance term
    # (2 * 0.5 * 0.25 + C1) / (0.5^2 + 0.25^2 + C1), C1 = (0.01 * 2)^2 = 0.0004; 176 px stays
    # even down to the 5th scale (11 px), so the pooled films stay constant
    x, y = np.full((1, 176, 176), 0.5), np.full((1, 176, 176), 0.25)
    lum = (0.25 + 0.0004) / (0.3125 + 0.0004)
    assert film_metrics.ssim(x, y)[0] == pytest.approx(lum, rel=1e-12)
    assert film_metrics.ms_ssim(x, y)[0] == pytest.approx(lum**0.1333, rel=1e-12)
    # opposite signs: a negative SSIM, clamped at 0 in MS-SSIM (pytorch-msssim's relu)
    assert film_metrics.ssim(x, -x)[0] < 0 and film_metrics.ms_ssim(x, -x)[0] == 0.0


def test_odd_pooling_counts_the_padding_zeros():
    x = np.ones((1, 3, 3, 1))
    got = film_metrics._avg_pool2(x)[0, ..., 0]
    np.testing.assert_allclose(got, [[0.25, 0.5], [0.5, 1.0]])
    np.testing.assert_allclose(got, F.avg_pool2d(_t(x), 2, padding=[1, 1])[0, 0].numpy())


def test_pairwise_ms_ssim_averages_all_pairs_of_a_report():
    a, b = _pair((2, 64, 64, 1), seed=7)
    c = np.clip(a + 0.1, -1, 1)
    films = np.stack([a, b, c], axis=1)  # [N, 3, H, W, C]
    want = np.mean([film_metrics.ms_ssim(x, y) for x, y in ((a, b), (a, c), (b, c))], axis=0)
    np.testing.assert_allclose(film_metrics.pairwise_ms_ssim(films), want)
    assert film_metrics.same_report_pairs(3) == [(0, 1), (0, 2), (1, 2)]
    with pytest.raises(ValueError, match="2 films"):
        film_metrics.pairwise_ms_ssim(films[:, :1])


# --------------------------------------------------------------------------------------------
# FID on torchxrayvision features, end to end
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xrv_file(tmp_path_factory):
    """A tiny random DenseNet in xrv's state-dict layout (torch.save of a state dict), and the
    PyTorch reference network holding the same weights."""
    from test_densenet import ref_model

    ref = ref_model(PRESETS["tiny"], seed=3)
    path = tmp_path_factory.mktemp("xrv") / "tiny-xrv.pt"
    torch.save(ref.state_dict(), path)
    return path, ref


def _ref_features(ref, films, size):
    """xrv's way: one channel, [-1, 1] -> [-1024, 1024], antialiased bilinear resize, then
    features2 (ReLU, global average pool of the last feature map)."""
    x = _t(films[..., :1].astype(np.float32) * 1024.0)
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    with torch.no_grad():
        return ref.features2(x).double().numpy()


def test_xrv_fid_from_a_state_dict_file_matches_the_reference_network(xrv_file):
    path, ref = xrv_file
    model = film_metrics.load_xrv(path, "tiny")
    rng = np.random.default_rng(0)
    grey = rng.uniform(-1, 1, (6, 48, 48, 1))
    gen = np.repeat(np.clip(grey + rng.normal(0, 0.4, grey.shape), -1, 1), 3, -1)  # RGB films
    real = np.repeat(grey, 3, -1)
    got = film_metrics.xrv_features(model, gen)
    want = _ref_features(ref, gen, 64)
    assert got.shape == (6, model.config.num_features)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    fid = film_metrics.fid_xrv(model, gen, real)
    want_fid = metrics.fid_from_features(want, _ref_features(ref, real, 64))
    assert fid == pytest.approx(want_fid, rel=1e-3, abs=1e-6) and fid > 0
    assert film_metrics.fid_xrv(model, real, real) == pytest.approx(0.0, abs=1e-6)


def test_film_figures_with_xrv_weights_and_two_films_per_report(xrv_file):
    """evaluate's `films` block given films directly: the xrv FID, the same-report pairs and
    the controls (no generator is needed when k >= 2)."""
    model = film_metrics.load_xrv(xrv_file[0], "tiny")
    rng = np.random.default_rng(1)
    real = np.repeat(rng.uniform(-1, 1, (5, 32, 32, 1)), 3, -1)
    pixels = np.clip(real[:, None, ..., :1] + rng.normal(0, 0.3, (5, 2, 32, 32, 1)), -1, 1)
    res = evaluate._film_figures(
        None, [], list(range(5)), pixels, real, [True] * 4 + [False],
        xrv_model=model, diversity_films=0, sampler=None, seed=0, bootstrap=50, fid_num=20,
        progress=False,
    )  # fmt: skip
    assert res["skipped"] == {}
    g, r = pixels, real[..., :1]
    assert res["fid_xrv"] == pytest.approx(
        metrics.fid_from_features(
            _ref_features(xrv_file[1], g.reshape(10, 32, 32, 1), 64),
            _ref_features(xrv_file[1], r, 64),
        ),
        rel=1e-3,
    )
    lo, hi = res["fid_xrv_ci95"]
    assert lo <= hi
    assert res["ms_ssim_scales"] == 2 and res["ms_ssim_real_count"] == 4
    want = np.mean([film_metrics.ms_ssim(g[:4, t], r[:4]) for t in range(2)])
    assert res["ms_ssim_real"] == pytest.approx(want)
    assert res["diversity"] == pytest.approx(film_metrics.ms_ssim(g[:, 0], g[:, 1]).mean())
    assert res["diversity_source"] == "all pairs of the 2 films of each report"
    for key in ("ms_ssim_real", "ms_ssim_real_mismatched", "diversity", "diversity_distinct"):
        lo, hi = res[f"{key}_ci95"]
        assert 0.0 <= lo <= hi <= 1.0
    md = evaluate._film_lines(res, markdown=True)
    assert "| FID, torchxrayvision DenseNet-121 features (generated vs real) |" in md[4]
    assert "MS-SSIM: 2 scales, weights 0.1356, 0.8644." in md


def test_cli_refuses_a_missing_xrv_weights_file_before_loading_anything(tmp_path, capsys):
    from llmcxr_jax import cli

    missing = tmp_path / "xrv.pt"
    argv = ["evaluate", "--checkpoint", str(tmp_path / "no-lm"), "--dataset", "cxr_phantoms/64"]
    argv += ["--out", str(tmp_path / "out"), "--xrv-weights", str(missing)]
    argv += ["--diversity-films", "4"]
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{missing}: no such file" in err and "Traceback" not in err
    assert "no-lm" not in err  # the weights were read first
