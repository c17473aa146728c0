"""Chest X-ray image loading and LLM-CXR preprocessing.

Why this module exists: LLM-CXR's VQ-GAN sees a chest X-ray as a 256x256 RGB float image in
[-1, 1], but the images arrive as 8-bit JPEGs (MIMIC-CXR-JPG), 8/16-bit PNGs of every PNG colour
type, and DICOMs with rescale, windowing, MONOCHROME1 inversion and compressed transfer syntaxes.
Everything that turns such a file into the model's input (and the model's output back into a PNG
people look at) lives here, so that training, encoding, generation and evaluation all see the
same pixels, and so that a bad file fails with an `ImageError` naming the file and the reason
instead of a PIL/pydicom traceback in the middle of a run.

Pipeline: `read_image` (file -> uint8 RGB [H, W, 3]) -> `preprocess` (short side resized to
`resolution` with PIL LANCZOS, centre crop, `x / 127.5 - 1`) = `load_cxr`. `load_batch` does
this for many files and reports the bad ones instead of stopping. `to_uint8`, `save_png`,
`image_grid` and `save_grid` go back from [-1, 1] to 8-bit pictures: RGB images to RGB PNGs,
1-channel (grey) ones, which a grey VQ-GAN decodes to, to 8-bit grey PNGs.

Behaviour choices:

- Formats: JPEG and PNG through Pillow (the file is fully decoded, so truncated files are
  errors; `ImageFile.LOAD_TRUNCATED_IMAGES` is never set), DICOM through pydicom. DICOM is
  recognised by content (the "DICM" magic at byte 128) or by a `.dcm`/`.dicom` suffix (then read
  even without the 128-byte preamble), unless the content is a PNG/JPEG signature.
- Alpha (grey+alpha, RGBA, palette transparency) is dropped: the stored colour values are used
  as they are, not composited on a background.
- 16-bit grey PNGs are scaled to 8 bits by the nominal 16-bit range: `round(x * 255 / 65535)`
  (i.e. `x / 257`); they are not contrast-stretched. (Pillow itself reduces 16-bit RGB and
  grey+alpha PNGs to 8 bits by keeping the high byte.)
- DICOM greyscale: modality LUT (rescale slope/intercept or Modality LUT Sequence), then the
  first VOI LUT (VOI LUT Sequence in preference to Window Center/Width, as pydicom does). The
  window's output range maps to [0, 255]; a VOI LUT's output range (min..max of its entries)
  maps to [0, 255]; without either, the min..max of the modality-scaled pixels maps to [0, 255]
  (a constant image gives 0). MONOCHROME1 is inverted inside that mapping, so bone is bright as
  in MONOCHROME2, and a MONOCHROME1 file stored as `max - v` gives exactly the same pixels as the
  MONOCHROME2 file storing `v`.
- DICOM colour (RGB, YBR_* converted to RGB by pydicom, PALETTE COLOR): more than 8 bits are
  scaled by the nominal range (`2**BitsStored - 1`, or the palette's entry depth).
- Multi-frame DICOM: the first frame is used (only that frame is decoded).
- Size: an image of more than `MAX_PIXELS` pixels (8192x8192, 67 megapixels; chest X-rays are
  about 2000x2000 to 4300x3500, 4 to 15 megapixels) is refused from its header, before any pixel
  is decoded, with an `ImageError` giving its size: a small file declaring a huge image (a PNG
  of zeros compresses about 1000:1) would otherwise take gigabytes and seconds to decode. Every
  reader takes a `max_pixels` to change the limit (None: none of ours; Pillow's own
  `Image.MAX_IMAGE_PIXELS` still applies).
- Compressed DICOM is decoded by whatever pydicom plugins are installed (with only Pillow: JPEG
  baseline/extended and JPEG 2000; RLE is built in); other transfer syntaxes raise an
  `ImageError` naming the transfer syntax and the missing packages.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from llmcxr_jax.errors import InputError

ImageSource = str | os.PathLike | bytes | bytearray | memoryview

PIL_FORMATS = ("JPEG", "PNG")
DICOM_SUFFIXES = (".dcm", ".dicom")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
MAX_PIXELS = 8192 * 8192  # larger images are refused from their header; see the module doc
# JPEG start-of-frame markers (baseline, progressive, lossless, ...; not DHT C4, JPG C8, DAC CC)
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class ImageError(InputError):
    """A file that cannot be used as an image; the message names the file and the reason."""


def _source_name(src: ImageSource, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(src, bytes | bytearray | memoryview):
        return "<bytes>"
    return os.fsdecode(src)


def _read_bytes(src: ImageSource, name: str) -> bytes:
    if isinstance(src, bytes | bytearray | memoryview):
        return bytes(src)
    try:
        return Path(os.fsdecode(src)).read_bytes()
    except OSError as e:
        raise ImageError(f"{name}: cannot read file ({e.strerror or e})") from e


def _is_dicom(data: bytes, name: str) -> bool:
    if data[128:132] == b"DICM":
        return True
    if data.startswith(_PNG_MAGIC) or data.startswith(_JPEG_MAGIC):
        return False
    return name.lower().endswith(DICOM_SUFFIXES)


def read_image(
    src: ImageSource, *, name: str | None = None, max_pixels: int | None = MAX_PIXELS
) -> np.ndarray:
    """Read a JPEG, PNG or DICOM (path or raw bytes) as uint8 RGB [H, W, 3].

    `name` is used in error messages (default: the path, or "<bytes>"). An image of more than
    `max_pixels` pixels is refused from its header, before decoding (None: no limit of ours).
    """
    name = _source_name(src, name)
    data = _read_bytes(src, name)
    if not data:
        raise ImageError(f"{name}: empty file")
    if _is_dicom(data, name):
        return _read_dicom(data, name, max_pixels)
    return _read_pil(data, name, max_pixels)


def _check_size(name: str, width: int, height: int, max_pixels: int | None, what: str) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            f"{name}: {what} declares {width}x{height} pixels (width x height, "
            f"{width * height / 1e6:.0f} megapixels), more than the limit of {max_pixels} "
            f"({max_pixels / 1e6:.0f} megapixels); refused before decoding"
        )


def _png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, the first chunk of every PNG."""
    if data.startswith(_PNG_MAGIC) and len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame segment (segments walked, not decoded)."""
    if not data.startswith(_JPEG_MAGIC):
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before
            return None
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _JPEG_SOF and i + 9 <= len(data):
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + length
    return None


# --- JPEG / PNG -------------------------------------------------------------------------------


def _read_pil(data: bytes, name: str, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    for size, what in ((_png_size(data), "PNG header"), (_jpeg_size(data), "JPEG header")):
        if size is not None:  # before Pillow sees the file, whose own limit warns or raises
            _check_size(name, *size, max_pixels, what)
    fmt = None
    try:
        with warnings.catch_warnings():  # the size is checked here, not by Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
        with im:
            fmt = im.format
            _check_size(name, *im.size, max_pixels, f"{fmt} header")
            im.load()  # full decode: a truncated file fails here, not later
            return _pil_to_rgb(im)
    except ImageError:
        raise
    except UnidentifiedImageError as e:
        raise ImageError(f"{name}: not an image (not a JPEG, PNG or DICOM file)") from e
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: image too large for Pillow ({e})") from e
    except Exception as e:  # anything Pillow raises while decoding
        raise ImageError(
            f"{name}: cannot decode {fmt + ' ' if fmt else ''}image, truncated or corrupt "
            f"({type(e).__name__}: {e})"
        ) from e


def _pil_to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(im).astype(np.float64)
        grey = np.rint(np.clip(grey, 0, 65535) * (255 / 65535)).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    # L, LA, 1, P, PA, RGB, RGBA, CMYK, ...: Pillow's conversion drops alpha
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


# --- DICOM ------------------------------------------------------------------------------------


def _has_value(ds: Any, keyword: str) -> bool:
    value = ds.get(keyword)
    return value is not None and value != "" and not (isinstance(value, list) and not value)


def _transfer_syntax(ds: Any) -> Any:
    from pydicom.uid import (
        UID,
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    )

    file_meta = getattr(ds, "file_meta", None)
    ts = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if ts:
        return UID(ts)
    # no file meta (a bare dataset read by suffix): use the encoding it was read with
    implicit, little = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little in (True, None) else ExplicitVRBigEndian


def _read_dicom(data: bytes, name: str, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.pixels import get_decoder, pixel_array

    has_magic = data[128:132] == b"DICM"
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=not has_magic)
    except Exception as e:
        raise ImageError(
            f"{name}: cannot parse DICOM, truncated or corrupt ({type(e).__name__}: {e})"
        ) from e
    if not has_magic and "SOPClassUID" not in ds and "Rows" not in ds:
        raise ImageError(f"{name}: not an image (no DICOM header and no DICOM image elements)")
    if not any(k in ds for k in _PIXEL_DATA_KEYWORDS):
        raise ImageError(
            f"{name}: DICOM file has no pixel data (no Pixel Data element; truncated, or not an "
            "image object)"
        )

    try:
        rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    except (TypeError, ValueError) as e:
        raise ImageError(f"{name}: DICOM Rows/Columns are not numbers ({e})") from e
    _check_size(name, columns, rows, max_pixels, "DICOM header (Columns x Rows)")
    try:
        ts = _transfer_syntax(ds)
    except Exception as e:
        raise ImageError(f"{name}: DICOM transfer syntax unknown ({e})") from e
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as e:
        raise ImageError(
            f"{name}: unsupported DICOM transfer syntax {ts.name} ({ts}): pydicom has no decoder"
        ) from e
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin available"
        raise ImageError(
            f"{name}: cannot decode DICOM transfer syntax {ts.name} ({ts}) with the installed "
            f"packages ({missing})"
        )
    if not getattr(ds, "file_meta", None) or "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ts

    try:
        frame = pixel_array(ds, index=0)  # multi-frame: first frame only
    except Exception as e:
        raise ImageError(
            f"{name}: cannot decode DICOM pixel data ({ts.name}), truncated or corrupt "
            f"({type(e).__name__}: {e})"
        ) from e

    try:
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        if photometric in ("MONOCHROME1", "MONOCHROME2"):
            if frame.ndim != 2:
                raise ValueError(f"expected one sample per pixel, got shape {frame.shape}")
            grey = _dicom_grey_to_uint8(frame, ds, invert=photometric == "MONOCHROME1")
            return np.repeat(grey[:, :, None], 3, axis=2)
        if photometric == "PALETTE COLOR":
            return _dicom_palette_to_rgb(frame, ds)
        if photometric == "RGB" or photometric.startswith("YBR"):
            bits = int(ds.get("BitsStored", 8) or 8)
            return _scale_to_uint8(frame, (1 << bits) - 1)
    except ImageError:
        raise
    except Exception as e:
        raise ImageError(
            f"{name}: cannot convert DICOM pixels to an image ({type(e).__name__}: {e})"
        ) from e
    raise ImageError(f"{name}: unsupported DICOM photometric interpretation {photometric!r}")


def _scale_to_uint8(rgb: np.ndarray, max_value: int) -> np.ndarray:
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"expected three samples per pixel, got shape {rgb.shape}")
    rgb = rgb[:, :, :3]
    if rgb.dtype == np.uint8:
        return np.ascontiguousarray(rgb)
    scaled = np.clip(rgb.astype(np.float64), 0, max_value) * (255 / max_value)
    return np.rint(scaled).astype(np.uint8)


def _dicom_palette_to_rgb(frame: np.ndarray, ds: Any) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    rgb = apply_color_lut(frame, ds)
    descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
    bits = int(descriptor[2]) if descriptor else 8 * rgb.dtype.itemsize
    return _scale_to_uint8(rgb, (1 << bits) - 1)


def _dicom_grey_to_uint8(frame: np.ndarray, ds: Any, *, invert: bool) -> np.ndarray:
    """Modality LUT, VOI LUT/window, range -> [0, 255] (inverted for MONOCHROME1)."""
    from pydicom.dataset import Dataset
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(frame, ds)
    voi_seq = ds.get("VOILUTSequence")
    if voi_seq and "LUTDescriptor" in voi_seq[0] and "LUTData" in voi_seq[0]:
        # VOI LUTs index by integer; the rescaled values are integral for usual slopes
        if values.dtype.kind == "f":
            values = np.rint(values).astype(np.int64)
        n_entries, first = int(voi_seq[0].LUTDescriptor[0]) or 65536, voi_seq[0].LUTDescriptor[1]
        entries = apply_voi_lut(np.arange(first, first + n_entries, dtype=np.int64), ds)
        lo, hi = float(entries.min()), float(entries.max())
        values = apply_voi_lut(values, ds).astype(np.float64)
    elif _has_value(ds, "WindowCenter") and _has_value(ds, "WindowWidth"):
        # pydicom's windowing, asked for an unsigned 8-bit output range: the window is [0, 255]
        window = Dataset()
        window.PhotometricInterpretation = "MONOCHROME2"
        window.BitsStored, window.PixelRepresentation = 8, 0
        window.add(ds["WindowCenter"])
        window.add(ds["WindowWidth"])
        if "VOILUTFunction" in ds:
            window.add(ds["VOILUTFunction"])
        values = apply_voi_lut(values.astype(np.float64), window)
        lo, hi = 0.0, 255.0
    else:
        values = values.astype(np.float64)
        lo, hi = float(values.min()), float(values.max())
    values = np.asarray(values, dtype=np.float64)
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    offset = hi - values if invert else values - lo
    return np.rint(np.clip(offset * (255 / (hi - lo)), 0, 255)).astype(np.uint8)


# --- LLM-CXR preprocessing --------------------------------------------------------------------


def preprocess(
    rgb_uint8: np.ndarray,
    resolution: int = 256,
    *,
    allow_upscale: bool = False,
    name: str = "image",
) -> np.ndarray:
    """uint8 RGB [H, W, 3] (or grey [H, W]) -> float32 [res, res, 3] in [-1, 1].

    The short side is resized to `resolution` with PIL LANCZOS (the long side keeps the aspect
    ratio, rounded to the nearest pixel), then the centre `resolution` square is cropped
    (an odd excess leaves the extra pixel at the bottom/right) and `x / 127.5 - 1` applied.
    An image whose short side is below `resolution` is an `ImageError` unless `allow_upscale`.
    """
    rgb = np.asarray(rgb_uint8)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(f"{name}: expected uint8 [H, W, 3], got {rgb.dtype} {rgb.shape}")
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    h, w = rgb.shape[:2]
    short, long = min(h, w), max(h, w)
    if short < 1:
        raise ImageError(f"{name}: empty image ({w}x{h})")
    if short < resolution and not allow_upscale:
        raise ImageError(
            f"{name}: image is {w}x{h} (width x height); its short side {short} is smaller than "
            f"the resolution {resolution}x{resolution} (pass allow_upscale=True to upscale)"
        )
    new_long = max(resolution, (2 * long * resolution + short) // (2 * short))  # round half up
    new_w, new_h = (resolution, new_long) if w <= h else (new_long, resolution)
    if (new_w, new_h) != (w, h):
        rgb = np.asarray(
            Image.fromarray(rgb, "RGB").resize((new_w, new_h), Image.Resampling.LANCZOS)
        )
    top, left = (new_h - resolution) // 2, (new_w - resolution) // 2
    crop = rgb[top : top + resolution, left : left + resolution]
    return crop.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def load_cxr(
    src: ImageSource,
    resolution: int = 256,
    *,
    allow_upscale: bool = False,
    name: str | None = None,
    max_pixels: int | None = MAX_PIXELS,
) -> np.ndarray:
    """Read and preprocess one image: float32 [res, res, 3] in [-1, 1]."""
    name = _source_name(src, name)
    image = read_image(src, name=name, max_pixels=max_pixels)
    return preprocess(image, resolution, allow_upscale=allow_upscale, name=name)


def load_batch(
    paths: Sequence[ImageSource],
    resolution: int = 256,
    *,
    allow_upscale: bool = False,
    max_pixels: int | None = MAX_PIXELS,
) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """Load what can be loaded: (images [N_ok, res, res, 3], ok_indices, [(index, message)])."""
    images: list[np.ndarray] = []
    ok: list[int] = []
    errors: list[tuple[int, str]] = []
    for i, src in enumerate(paths):
        try:
            images.append(
                load_cxr(src, resolution, allow_upscale=allow_upscale, max_pixels=max_pixels)
            )
        except ImageError as e:
            errors.append((i, str(e)))
        else:
            ok.append(i)
    if not images:
        return np.zeros((0, resolution, resolution, 3), np.float32), ok, errors
    return np.stack(images), ok, errors


# --- back to pictures -------------------------------------------------------------------------


def to_uint8(image: Any) -> np.ndarray:
    """[-1, 1] floats (any shape: RGB, grey [H, W, 1], batches) -> uint8: clip, then
    `round((x + 1) / 2 * 255)`; NaN -> 0."""
    x = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=-1.0)
    return np.rint((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def _as_hwc(image: np.ndarray) -> np.ndarray:
    """[H, W], [H, W, 1] or [H, W, 3] -> [H, W, 1] or [H, W, 3]."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"expected an image [H, W, 3], [H, W, 1] or [H, W], got {image.shape}")
    return image


def save_png(image: Any, path: str | os.PathLike) -> None:
    """Write an image in [-1, 1] ([H, W, 3], [H, W, 1] or [H, W]; uint8 is written as is).

    Three channels give an RGB PNG, one (or none) an 8-bit grey one (mode "L"). The PNG is
    written under a temporary name and renamed: an interrupted write leaves no partial file.
    """
    arr = np.asarray(image)
    arr = _as_hwc(arr if arr.dtype == np.uint8 else to_uint8(arr))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr.shape[2] == 1:
        pil = Image.fromarray(np.ascontiguousarray(arr[:, :, 0]), "L")
    else:
        pil = Image.fromarray(np.ascontiguousarray(arr), "RGB")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # no half-written PNG is left
    try:
        pil.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _tiles(images: Any) -> np.ndarray:
    """Grid tiles as uint8 [N, H, W, 1 or 3]: grey stays grey unless some tile is RGB."""
    if isinstance(images, list | tuple):  # images of their own channel counts
        if not images:
            raise ValueError("expected images [N>0, H, W, C], got none")
        tiles = [_as_hwc(np.asarray(t)) for t in images]
        c = max(t.shape[2] for t in tiles)
        tiles = [t if t.dtype == np.uint8 else to_uint8(t) for t in tiles]
        shapes = {t.shape[:2] for t in tiles}
        if len(shapes) != 1:
            raise ValueError(f"grid images differ in size: {sorted(shapes)}")
        return np.stack([np.repeat(t, c // t.shape[2], axis=2) for t in tiles])
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[3] not in (1, 3) or arr.shape[0] == 0:
        raise ValueError(f"expected images [N>0, H, W, 3] or [N>0, H, W, 1], got {arr.shape}")
    return arr if arr.dtype == np.uint8 else to_uint8(arr)


def image_grid(images: Any, ncols: int = 8, *, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """[N, H, W, 3], [N, H, W, 1] or [N, H, W] in [-1, 1] -> one uint8 grid image [., ., C].

    Grey images give a grey grid [., ., 1], RGB ones an RGB grid [., ., 3]. `images` may also be
    a list of [H, W, C] images of mixed channel counts: the grey ones are repeated to RGB if
    any is RGB. Tiles are laid out row by row, `ncols` per row, with `pad`-pixel separators of
    `pad_value` between them (no outer border); empty cells of the last row are filled with
    `pad_value`.
    """
    if ncols < 1 or pad < 0:
        raise ValueError(f"need ncols >= 1 and pad >= 0, got ncols={ncols}, pad={pad}")
    tiles = _tiles(images)
    n, h, w, c = tiles.shape
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    grid = np.full(
        (nrows * h + (nrows - 1) * pad, ncols * w + (ncols - 1) * pad, c), pad_value, np.uint8
    )
    for i, tile in enumerate(tiles):
        r, col = divmod(i, ncols)
        grid[r * (h + pad) : r * (h + pad) + h, col * (w + pad) : col * (w + pad) + w] = tile
    return grid


def save_grid(
    images: Any, path: str | os.PathLike, ncols: int = 8, *, pad: int = 2, pad_value: int = 255
) -> None:
    """Write `image_grid(images, ncols, pad=pad, pad_value=pad_value)` as a PNG (grey or RGB)."""
    save_png(image_grid(images, ncols, pad=pad, pad_value=pad_value), path)
