"""Image reading (JPEG/PNG/DICOM), LLM-CXR preprocessing and the way back to PNGs.

Every file is built in `tmp_path`; expected values are computed by hand or by PIL directly.
"""

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from llmcxr_jax.data.images import (
    MAX_PIXELS,
    ImageError,
    image_grid,
    load_batch,
    load_cxr,
    preprocess,
    read_image,
    save_grid,
    save_png,
    to_uint8,
)


def make_dicom(
    path,
    stored,
    *,
    photometric="MONOCHROME2",
    bits_stored=None,
    signed=False,
    transfer_syntax=ExplicitVRLittleEndian,
    pixel_bytes=None,
    **elements,
):
    """Write a single- or multi-frame greyscale DICOM whose stored pixels are `stored`."""
    stored = np.asarray(stored)
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    fm.MediaStorageSOPInstanceUID = generate_uid()
    fm.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID = fm.MediaStorageSOPClassUID
    ds.SOPInstanceUID = fm.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    if stored.ndim == 3:
        ds.NumberOfFrames = stored.shape[0]
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = stored.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(signed)
    for k, v in elements.items():
        setattr(ds, k, v)
    if pixel_bytes is not None:
        ds.PixelData = pixel_bytes
    elif stored.size:
        ds.PixelData = stored.astype(stored.dtype.newbyteorder("<")).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def grey(rgb):
    """The single channel of a grey RGB image (checks the channels are equal)."""
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 1])
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    return rgb[..., 0]


# --- DICOM ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,bits", [(np.uint16, 12), (np.uint16, 16), (np.uint8, 8)])
def test_monochrome1_equals_monochrome2(tmp_path, rng, dtype, bits):
    top = (1 << bits) - 1
    m2 = rng.integers(0, top + 1, size=(40, 50)).astype(dtype)
    m2[0, 0], m2[0, 1] = 3, top - 5  # a range that is not the full type range
    m1 = (top - m2).astype(dtype)
    a = read_image(make_dicom(tmp_path / "m2.dcm", m2, bits_stored=bits))
    b = read_image(make_dicom(tmp_path / "m1.dcm", m1, photometric="MONOCHROME1", bits_stored=bits))
    np.testing.assert_array_equal(a, b)
    g = grey(a)
    lo, hi = int(m2.min()), int(m2.max())
    expected = np.rint((m2.astype(np.float64) - lo) / (hi - lo) * 255).astype(np.uint8)
    np.testing.assert_array_equal(g, expected)
    assert g.min() == 0 and g.max() == 255
    # bone (high stored value in MONOCHROME2) is bright in both
    assert g[0, 1] > g[0, 0]


def test_dicom_16bit_unsigned_no_window_uses_min_max(tmp_path):
    # BitsStored 12: the high 4 bits of the 16 allocated are not part of the value
    stored = np.array([[95, 1095], [2095, 4095 | 0xF000]], np.uint16)
    g = grey(read_image(make_dicom(tmp_path / "u.dcm", stored, bits_stored=12)))
    # (v - 95) / 4000 * 255: 0, 63.75 -> 64, 127.5 -> 128 (half to even), 255
    np.testing.assert_array_equal(g, [[0, 64], [128, 255]])


def test_dicom_16bit_signed_with_rescale_intercept(tmp_path):
    stored = np.array([[-1000, 0], [1000, 3071]], np.int16)
    path = make_dicom(
        tmp_path / "s.dcm", stored, signed=True, RescaleSlope=1, RescaleIntercept=-1024
    )
    g = grey(read_image(path))
    # HU = stored - 1024 in [-2024, 2047]; (HU + 2024) / 4071 * 255:
    # 1000 / 4071 * 255 = 62.64 -> 63, 2000 / 4071 * 255 = 125.28 -> 125
    np.testing.assert_array_equal(g, [[0, 63], [125, 255]])


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dicom_window_center_width_hand_computed(tmp_path, photometric):
    # HU = stored - 1024; window centre 40, width 401 (DICOM "LINEAR"):
    #   HU <= 40 - 0.5 - 200 = -160.5 -> 0;  HU > 39.5 + 200 = 239.5 -> 255;
    #   else ((HU - 39.5) / 400 + 0.5) * 255
    hu = np.array([[-1024, -200, -160], [-60, 40, 140], [239, 240, 2000]])
    expected = np.array(
        [
            [0, 0, 0],  # -160: (-199.5/400 + .5) * 255 = 0.319 -> 0
            [64, 128, 192],  # 64.07 -> 64, 127.82 -> 128, 191.57 -> 192
            [255, 255, 255],  # 239: (199.5/400 + .5) * 255 = 254.68 -> 255
        ],
        np.uint8,
    )
    stored = (hu + 1024).astype(np.int16)
    path = make_dicom(
        tmp_path / "w.dcm",
        stored,
        photometric=photometric,
        signed=True,
        RescaleSlope=1,
        RescaleIntercept=-1024,
        WindowCenter=40,
        WindowWidth=401,
    )
    g = grey(read_image(path))
    np.testing.assert_array_equal(g, expected if photometric == "MONOCHROME2" else 255 - expected)
    # the window, not the pixels' own range, maps to [0, 255]: no stretch when all are inside
    inside = (np.array([[-60, 40, 140]]) + 1024).astype(np.int16)
    path = make_dicom(
        tmp_path / "w2.dcm",
        inside,
        photometric=photometric,
        signed=True,
        RescaleSlope=1,
        RescaleIntercept=-1024,
        WindowCenter=40,
        WindowWidth=401,
    )
    g = grey(read_image(path))
    np.testing.assert_array_equal(
        g, expected[1:2] if photometric == "MONOCHROME2" else 255 - expected[1:2]
    )


def test_dicom_voi_lut_sequence_output_range_maps_to_0_255(tmp_path):
    item = Dataset()
    item.LUTDescriptor = [4, 0, 8]  # 4 entries, first input value 0, 8-bit entries
    item.add_new("LUTData", "US", [0, 10, 20, 200])
    stored = np.array([[0, 1], [2, 3]], np.uint16)
    path = make_dicom(tmp_path / "voi.dcm", stored, bits_stored=12, VOILUTSequence=[item])
    # entries 0, 10, 20, 200 over the LUT's range 0..200: 0, 12.75 -> 13, 25.5 -> 26, 255
    np.testing.assert_array_equal(grey(read_image(path)), [[0, 13], [26, 255]])


def test_dicom_8bit_signed_and_bytes_without_preamble(tmp_path):
    stored = np.array([[-128, -28], [72, 127]], np.int8)
    path = make_dicom(tmp_path / "s8.dcm", stored, signed=True)
    g = grey(read_image(path))
    # (v + 128) / 255 * 255
    np.testing.assert_array_equal(g, [[0, 100], [200, 255]])
    # by content (no suffix) from bytes, and by suffix for a dataset without the preamble
    data = path.read_bytes()
    np.testing.assert_array_equal(read_image(data, name="upload")[..., 0], g)
    ds = pydicom.dcmread(path)
    ds.preamble, ds.file_meta = None, FileMetaDataset()
    buf = io.BytesIO()  # a bare dataset: no preamble, no "DICM", no file meta
    pydicom.dcmwrite(buf, ds, implicit_vr=False, little_endian=True, enforce_file_format=False)
    assert buf.getvalue()[128:132] != b"DICM"
    np.testing.assert_array_equal(read_image(buf.getvalue(), name="bare.dcm")[..., 0], g)


def test_dicom_multiframe_uses_first_frame(tmp_path):
    frames = np.stack([np.array([[0, 10], [20, 30]]), np.array([[30, 0], [0, 0]])]).astype(
        np.uint16
    )
    g = grey(read_image(make_dicom(tmp_path / "mf.dcm", frames)))
    np.testing.assert_array_equal(g, [[0, 85], [170, 255]])


def test_dicom_jpeg_baseline_is_decoded(tmp_path, rng):
    pixels = np.zeros((32, 48), np.uint8)
    pixels[:, 24:] = 255
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=95)
    decoded = _pil(io.BytesIO(buf.getvalue()))
    lo, hi = int(decoded.min()), int(decoded.max())
    expected = np.rint((decoded - lo) / (hi - lo) * 255).astype(np.uint8)
    path = make_dicom(
        tmp_path / "j.dcm",
        pixels,
        transfer_syntax=JPEGBaseline8Bit,
        pixel_bytes=encapsulate([buf.getvalue()]),
    )
    np.testing.assert_array_equal(grey(read_image(path)), expected)


def test_dicom_unsupported_transfer_syntax(tmp_path):
    path = make_dicom(
        tmp_path / "ls.dcm",
        np.zeros((8, 8), np.uint16),
        transfer_syntax=JPEGLSLossless,
        pixel_bytes=encapsulate([b"\xff\xd8\xff\xf7 not really jpeg-ls"]),
    )
    with pytest.raises(ImageError, match=r"ls\.dcm.*JPEG-LS Lossless"):
        read_image(path)


def test_dicom_without_pixel_data(tmp_path):
    path = make_dicom(tmp_path / "nopix.dcm", np.zeros((0, 0), np.uint16))
    with pytest.raises(ImageError, match=r"nopix\.dcm.*no pixel data"):
        read_image(path)


def test_truncated_dicom(tmp_path, rng):
    full = make_dicom(tmp_path / "full.dcm", rng.integers(0, 4096, (64, 64)).astype(np.uint16))
    cut = tmp_path / "cut.dcm"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cut\.dcm") as e:
        read_image(cut)
    assert e.value.__cause__ is not None
    # cut inside the header (by content: a .bin name)
    with pytest.raises(ImageError, match=r"head\.bin"):
        read_image(data[:140], name="head.bin")


# --- JPEG / PNG -------------------------------------------------------------------------------


def _pil(path, convert=None):
    """What PIL itself decodes (file closed afterwards)."""
    with Image.open(path) as im:
        return np.asarray(im.convert(convert) if convert else im)


def _png(path, im, **kw):
    im.save(path, "PNG", **kw)
    return path


def test_grey_png_becomes_three_equal_channels(tmp_path, rng):
    g = rng.integers(0, 256, (20, 30)).astype(np.uint8)
    out = read_image(_png(tmp_path / "g.png", Image.fromarray(g)))
    assert out.shape == (20, 30, 3)
    np.testing.assert_array_equal(grey(out), g)


def test_grey_alpha_and_rgba_png_drop_alpha(tmp_path, rng):
    rgba = rng.integers(0, 256, (10, 12, 4)).astype(np.uint8)
    out = read_image(_png(tmp_path / "rgba.png", Image.fromarray(rgba, "RGBA")))
    np.testing.assert_array_equal(out, rgba[..., :3])
    la = rng.integers(0, 256, (10, 12, 2)).astype(np.uint8)
    out = read_image(_png(tmp_path / "la.png", Image.fromarray(la, "LA")))
    np.testing.assert_array_equal(grey(out), la[..., 0])


def test_palette_png(tmp_path):
    im = Image.new("P", (3, 2))
    im.putpalette([10, 20, 30, 200, 100, 0, 255, 255, 255] + [0, 0, 0] * 253)
    im.putdata([0, 1, 2, 2, 1, 0])
    out = read_image(_png(tmp_path / "p.png", im))
    np.testing.assert_array_equal(
        out,
        [
            [[10, 20, 30], [200, 100, 0], [255, 255, 255]],
            [[255, 255, 255], [200, 100, 0], [10, 20, 30]],
        ],
    )


def test_16bit_png_scaled_by_full_range(tmp_path):
    v = np.array([[0, 257, 1000], [32767, 65280, 65535]], np.uint16)
    path = _png(tmp_path / "g16.png", Image.fromarray(v))
    assert _pil(path).dtype == np.uint16  # really a 16-bit PNG
    # round(v * 255 / 65535) = round(v / 257): 0, 1, 3.89 -> 4, 127.5 -> 127 (even), 254, 255
    np.testing.assert_array_equal(grey(read_image(path)), [[0, 1, 4], [127, 254, 255]])


def test_jpeg_and_bytes(tmp_path, rng):
    rgb = rng.integers(0, 256, (16, 24, 3)).astype(np.uint8)
    path = tmp_path / "a.jpg"
    Image.fromarray(rgb).save(path, "JPEG")
    expected = _pil(path, "RGB")
    np.testing.assert_array_equal(read_image(path), expected)
    np.testing.assert_array_equal(read_image(path.read_bytes()), expected)
    np.testing.assert_array_equal(read_image(str(path)), expected)


@pytest.mark.parametrize("fmt,suffix", [("PNG", "png"), ("JPEG", "jpg")])
def test_truncated_png_and_jpeg(tmp_path, rng, fmt, suffix):
    rgb = rng.integers(0, 256, (96, 96, 3)).astype(np.uint8)  # noise: does not compress
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt)
    path = tmp_path / f"trunc.{suffix}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match=rf"trunc\.{suffix}") as e:
        read_image(path)
    assert e.value.__cause__ is not None
    with pytest.raises(ImageError, match=r"upload-3"):
        read_image(path.read_bytes(), name="upload-3")


def test_not_an_image(tmp_path):
    path = tmp_path / "x.png"
    path.write_text("this is not a png\n")
    with pytest.raises(ImageError, match=r"x\.png.*not an image"):
        read_image(path)
    with pytest.raises(ImageError, match=r"note\.txt.*not an image"):
        load_cxr(b"hello world", name="note.txt")
    (tmp_path / "x.dcm").write_text("not a dicom either\n")
    with pytest.raises(ImageError, match=r"x\.dcm.*not an image"):
        read_image(tmp_path / "x.dcm")
    with pytest.raises(ImageError, match=r"<bytes>"):
        read_image(b"hello world")
    with pytest.raises(ImageError, match=r"missing\.png"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match=r"empty\.dcm.*empty"):
        read_image(b"", name="empty.dcm")
    assert issubclass(ImageError, ValueError)


def _huge_png(path, width, height, rows=None):
    """A 1-bit grey PNG of zeros, written by hand row by row (a few KB on disk, never in memory
    as an image); only its first `rows` rows when given (a truncated file)."""

    def chunk(kind, body):
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    z = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the packed bits
    idat = b"".join(z.compress(row) for _ in range(height if rows is None else rows)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def _jpeg_declaring(path, width, height):
    """A small JPEG whose frame header is rewritten to declare `width` x `height`."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


def test_oversize_images_are_refused_from_their_header(tmp_path):
    png = _huge_png(tmp_path / "huge.png", 12000, 12000)
    assert png.stat().st_size < 100_000
    jpg = _jpeg_declaring(tmp_path / "huge.jpg", 12000, 12000)
    dcm = make_dicom(tmp_path / "huge.dcm", np.zeros((0, 0), np.uint8), pixel_bytes=b"\0" * 64)
    ds = pydicom.dcmread(dcm)
    ds.Rows = ds.Columns = 12000
    ds.save_as(dcm, enforce_file_format=True)
    for path, what in ((png, "PNG header"), (jpg, "JPEG header"), (dcm, "DICOM header")):
        with pytest.raises(ImageError) as e:
            read_image(path)
        msg = str(e.value)
        assert msg.startswith(f"{path}: {what}") and "12000x12000" in msg, msg
        assert f"limit of {MAX_PIXELS}" in msg and "refused before decoding" in msg
        assert len(msg.splitlines()) == 1
    # beyond Pillow's own limit (where it raises at open): ours, or Pillow's said once
    bomb = _huge_png(tmp_path / "bomb.png", 100000, 100000, rows=8)
    with pytest.raises(ImageError, match=r"PNG header declares 100000x100000 pixels"):
        read_image(bomb)
    with pytest.raises(ImageError, match=r"bomb\.png: image too large for Pillow") as e:
        read_image(bomb, max_pixels=None)
    assert "image image" not in str(e.value)


def test_max_pixels_is_a_parameter(tmp_path, rng):
    png = _png(tmp_path / "small.png", Image.fromarray(rng.integers(0, 256, (16, 24), np.uint8)))
    jpg = tmp_path / "small.jpg"
    Image.fromarray(rng.integers(0, 256, (16, 24), np.uint8)).save(jpg, "JPEG")
    for path in (png, jpg):
        with pytest.raises(ImageError, match=r"declares 24x16 pixels.*limit of 383"):
            read_image(path, max_pixels=383)
        assert read_image(path, max_pixels=384).shape == (16, 24, 3)
    _, ok, errors = load_batch([png], 8, max_pixels=100)
    assert ok == [] and "limit of 100" in errors[0][1]


def test_refusing_an_oversize_png_costs_little_memory_and_time(tmp_path):
    png = _huge_png(tmp_path / "huge.png", 12000, 12000)
    probe = (
        "import json, resource, sys, time\n"
        "from llmcxr_jax.data.images import ImageError, read_image\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "t = time.perf_counter()\n"
        "try:\n"
        "    read_image(sys.argv[1])\n"
        "except ImageError as e:\n"
        "    msg = str(e)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'kb': after - before, 's': time.perf_counter() - t, 'msg': msg}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run(
        [sys.executable, "-c", probe, str(png)], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert "12000x12000" in got["msg"]
    assert got["kb"] * 1024 < 300e6 and got["s"] < 2.0, got  # decoding: 1.8 GB, 12 s


# --- preprocessing ----------------------------------------------------------------------------


def test_preprocess_non_square_matches_pil_lanczos(rng):
    rgb = rng.integers(0, 256, (400, 300, 3)).astype(np.uint8)  # W=300, H=400
    out = preprocess(rgb, 256)
    assert out.shape == (256, 256, 3) and out.dtype == np.float32
    assert out.min() >= -1.0 and out.max() <= 1.0
    # short side 300 -> 256, long side 400 * 256 / 300 = 341.33 -> 341; crop rows 42..297
    resized = np.asarray(Image.fromarray(rgb).resize((256, 341), Image.Resampling.LANCZOS))
    expected = resized[42:298].astype(np.float32) / 127.5 - 1
    np.testing.assert_array_equal(out, expected)


def test_preprocess_crop_is_centred():
    # 512 wide, 256 high: no resize, columns 128..383 are kept
    band = np.zeros((256, 512, 3), np.uint8)
    band[:, :128] = 255  # left band
    band[:, 384:] = 100  # right band
    band[:, 128:384] = np.arange(256, dtype=np.uint8)[None, :, None]
    out = preprocess(band, 256)
    np.testing.assert_array_equal(to_uint8(out), band[:, 128:384])
    # the same transposed (tall image): rows 128..383
    tall = band.transpose(1, 0, 2)
    np.testing.assert_array_equal(to_uint8(preprocess(tall, 256)), tall[128:384])
    # and after a resize (short side 128 -> 64) the kept middle has no band pixels
    small = preprocess(np.asarray(Image.fromarray(band).resize((256, 128))), 64)
    u = to_uint8(small)
    assert (u[:, 0] < 200).all() and (u[:, -1] > 200).all()  # a ramp, not the bands


def test_too_small_raises_unless_upscaling_allowed(tmp_path, rng):
    path = _png(
        tmp_path / "small.png", Image.fromarray(rng.integers(0, 256, (300, 200, 3), np.uint8))
    )
    with pytest.raises(ImageError, match=r"small\.png.*200x300.*256") as e:
        load_cxr(path, 256)
    assert "200" in str(e.value) and "256" in str(e.value)
    out = load_cxr(path, 256, allow_upscale=True)
    assert out.shape == (256, 256, 3)
    resized = np.asarray(
        Image.fromarray(read_image(path)).resize((256, 384), Image.Resampling.LANCZOS)
    )
    np.testing.assert_array_equal(out, resized[64:320].astype(np.float32) / 127.5 - 1)


def test_load_cxr_dicom(tmp_path, rng):
    stored = rng.integers(0, 4096, (300, 280)).astype(np.uint16)
    out = load_cxr(make_dicom(tmp_path / "big.dcm", stored, bits_stored=12), 128)
    assert out.shape == (128, 128, 3) and out.dtype == np.float32
    assert out.min() >= -1 and out.max() <= 1


# --- back to pictures -------------------------------------------------------------------------


def test_to_uint8_inverts_the_scaling_exactly():
    u = np.arange(256, dtype=np.uint8)
    x = u.astype(np.float32) / 127.5 - 1
    np.testing.assert_array_equal(to_uint8(x), u)
    np.testing.assert_array_equal(
        to_uint8(np.array([-3.0, -1.0, 0.0, 0.002, 1.0, 7.0, np.nan])),
        [0, 0, 128, 128, 255, 255, 0],
    )


def test_save_png_round_trip(tmp_path, rng):
    u = rng.integers(0, 256, (256, 256, 3)).astype(np.uint8)
    x = u.astype(np.float32) / 127.5 - 1
    save_png(x, tmp_path / "out" / "rt.png")
    np.testing.assert_array_equal(_pil(tmp_path / "out" / "rt.png"), u)
    np.testing.assert_array_equal(load_cxr(tmp_path / "out" / "rt.png"), x)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["rt.png"]  # no temporary left


def test_image_grid_and_save_grid(tmp_path):
    imgs = np.stack([np.full((4, 5, 3), v, np.float32) for v in (-1.0, 0.0, 1.0)])
    grid = image_grid(imgs, ncols=2, pad=1, pad_value=77)
    assert grid.shape == (4 * 2 + 1, 5 * 2 + 1, 3) and grid.dtype == np.uint8
    assert (grid[:4, :5] == 0).all() and (grid[:4, 6:] == 128).all() and (grid[5:, :5] == 255).all()
    assert (grid[4] == 77).all() and (grid[:, 5] == 77).all() and (grid[5:, 6:] == 77).all()
    save_grid(imgs, tmp_path / "grid.png", ncols=2, pad=1, pad_value=77)
    np.testing.assert_array_equal(_pil(tmp_path / "grid.png"), grid)
    assert image_grid(imgs, ncols=8).shape == (4, 5 * 3 + 2 * 2, 3)


def _mode(path):
    with Image.open(path) as im:
        return im.mode


def test_grey_images_are_written_grey(tmp_path, rng):
    x = rng.uniform(-1.05, 1.05, (12, 10, 1)).astype(np.float32)  # a grey model's output
    save_png(x, tmp_path / "g.png")
    assert _mode(tmp_path / "g.png") == "L"
    np.testing.assert_array_equal(_pil(tmp_path / "g.png"), to_uint8(x)[:, :, 0])
    save_png(x[:, :, 0], tmp_path / "g2.png")  # [H, W] too
    assert _mode(tmp_path / "g2.png") == "L"
    np.testing.assert_array_equal(_pil(tmp_path / "g2.png"), to_uint8(x)[:, :, 0])
    save_png(np.repeat(x, 3, axis=2), tmp_path / "rgb.png")  # RGB stays RGB
    assert _mode(tmp_path / "rgb.png") == "RGB"

    grey = np.stack([np.full((4, 5, 1), v, np.float32) for v in (-1.0, 0.0, 1.0)])
    grid = image_grid(grey, ncols=2, pad=1, pad_value=77)
    assert grid.shape == (9, 11, 1) and grid.dtype == np.uint8
    assert (grid[:4, :5] == 0).all() and (grid[:4, 6:] == 128).all() and (grid[5:, 6:] == 77).all()
    save_grid(grey, tmp_path / "grid.png", ncols=2, pad=1, pad_value=77)
    assert _mode(tmp_path / "grid.png") == "L"
    np.testing.assert_array_equal(_pil(tmp_path / "grid.png"), grid[:, :, 0])

    rgb = np.full((4, 5, 3), 0.0, np.float32)
    rgb[..., 0] = 1.0
    mixed = image_grid([grey[0], rgb, grey[2]], ncols=3, pad=1)  # grey tiles become RGB
    assert mixed.shape == (4, 17, 3)
    assert (mixed[:, :5] == 0).all() and (mixed[:, 12:] == 255).all()
    np.testing.assert_array_equal(mixed[0, 6], [255, 128, 128])
    save_grid([grey[0], rgb], tmp_path / "mixed.png")
    assert _mode(tmp_path / "mixed.png") == "RGB"
    with pytest.raises(ValueError, match="differ in size"):
        image_grid([grey[0], np.zeros((5, 5, 1), np.float32)])


def test_load_batch_reports_the_bad_file(tmp_path, rng):
    u = [rng.integers(0, 256, (64, 64, 3)).astype(np.uint8) for _ in range(3)]
    paths = [_png(tmp_path / f"ok{i}.png", Image.fromarray(a)) for i, a in enumerate(u)]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    images, ok, errors = load_batch([paths[0], bad, paths[1], paths[2]], 64)
    assert images.shape == (3, 64, 64, 3) and images.dtype == np.float32
    assert ok == [0, 2, 3]
    assert len(errors) == 1 and errors[0][0] == 1 and "bad.png" in errors[0][1]
    for img, a in zip(images, u, strict=True):
        np.testing.assert_array_equal(to_uint8(img), a)
    empty, ok, errors = load_batch([bad], 64)
    assert empty.shape == (0, 64, 64, 3) and ok == [] and len(errors) == 1
