"""The VQ-GAN that turns chest X-rays into LLM tokens and back, in Flax NNX.

Faithful to taming-transformers' `VQModel` (Encoder, Decoder, VectorQuantizer2) so that
LLM-CXR's released checkpoint loads and gives the same codes: GroupNorm(32, eps 1e-6), swish,
down-sampling by a stride-2 3x3 convolution after padding one row/column at the bottom/right,
nearest-neighbour up-sampling then a 3x3 convolution, single-head attention blocks at the
configured resolutions, taming's "legacy" codebook loss (beta on the codebook term) and the
straight-through estimator. Layout is NHWC; module names mirror taming's state-dict keys, so the
converter's table (convert/taming.py) is generated from the config.

Codes are raster-ordered (row-major over the h x w latent grid): LLM-CXR's 256x256 images give
16 x 16 = 256 codes, each in [0, n_embed).

Channels: everything upstream hands over images [B, H, W, 3] in [-1, 1] (grey films replicated
to RGB), and the model adapts them at its boundary (`to_channels`): a grey model
(`in_channels=1`, the demo's) takes the channel mean, a 3-channel model (LLM-CXR's, for its
released RGB weights) repeats a 1-channel input. `decode` returns `out_ch` channels.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from llmcxr_jax.errors import InputError
from llmcxr_jax.models import common

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class VQGANConfig:
    """taming's `ddconfig` plus the quantizer's settings (`n_embed`, `embed_dim`, `beta`)."""

    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    z_channels: int = 256
    embed_dim: int = 256
    n_embed: int = 1024
    beta: float = 0.25
    legacy: bool = True
    dropout: float = 0.0
    dtype: str = "float32"  # compute dtype; parameters stay fp32

    def __post_init__(self):
        for c in self.channels:
            if c % 32:
                raise InputError(f"GroupNorm(32) needs channel counts divisible by 32, got {c}")
        if self.resolution % self.downsample_factor:
            raise InputError(
                f"resolution {self.resolution} is not divisible by {self.downsample_factor}"
            )
        if self.dropout:
            raise InputError("dropout > 0 is not supported (taming's VQ-GANs use 0)")

    @property
    def channels(self) -> tuple[int, ...]:
        return (self.ch, *(self.ch * m for m in self.ch_mult))

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_size(self) -> int:
        return self.resolution // self.downsample_factor

    @property
    def num_codes(self) -> int:
        """Codes per image (h * w of the latent grid)."""
        return self.latent_size**2

    def replace(self, **changes: Any) -> VQGANConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VQGANConfig:
        d = dict(d)
        for k in ("ch_mult", "attn_resolutions"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


PRESETS: dict[str, VQGANConfig] = {
    # LLM-CXR: taming's f16 configuration, 1024 codes of dim 256, 16 x 16 codes at 256 x 256.
    "llmcxr-f16": VQGANConfig(),
    # The demo's: 64 x 64 grey images, f8, 8 x 8 = 64 codes per image. One channel: a
    # radiograph is grey, and an RGB model's reconstructions of grey films drift in colour.
    "demo-f8": VQGANConfig(
        resolution=64,
        in_channels=1,
        out_ch=1,
        ch=32,
        ch_mult=(1, 1, 2, 2),
        num_res_blocks=1,
        attn_resolutions=(8,),
        z_channels=64,
        embed_dim=64,
        n_embed=256,
    ),
    # For tests: 32 x 32 images, f2.
    "tiny": VQGANConfig(
        resolution=32,
        ch=32,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(16,),
        z_channels=32,
        embed_dim=32,
        n_embed=64,
    ),
}


def get_preset(name: str, **overrides: Any) -> VQGANConfig:
    if name not in PRESETS:
        raise InputError(f"unknown VQ-GAN preset {name!r}; known: {sorted(PRESETS)}")
    common.check_fields(VQGANConfig, overrides, "VQ-GAN")
    return PRESETS[name].replace(**overrides)


def to_channels(images: Array, channels: int) -> Array:
    """Images [..., C] as [..., channels]: the same, the channel mean (to 1), or repeated (from 1).

    A chest X-ray is grey, so a colour input to a grey model is averaged to one channel, as the
    classifier's `densenet.xrv_preprocess` does. The mean is computed as
    `x[..., :1] + mean(x - x[..., :1])`: equal to it up to rounding, and exactly channel 0 for a
    grey-replicated film, so such a film given as RGB or as one channel is the same input.
    A 1-channel input to a 3-channel model is repeated. Other channel counts are an error.
    """
    c = images.shape[-1]
    if c == channels:
        return images
    if channels == 1:
        first = images[..., :1]
        return first + jnp.mean(images - first, axis=-1, keepdims=True)
    if c == 1:
        return jnp.repeat(images, channels, axis=-1)
    raise ValueError(f"cannot turn {c}-channel images into {channels}-channel ones")


# --------------------------------------------------------------------------------------------
# Building blocks (names follow taming's modules)
# --------------------------------------------------------------------------------------------


def _conv(
    cin: int, cout: int, k: int, rngs: nnx.Rngs, dtype, *, stride: int = 1, padding: Any = None
) -> nnx.Conv:
    pad = ((k // 2, k // 2),) * 2 if padding is None else padding
    return nnx.Conv(cin, cout, (k, k), strides=stride, padding=pad, dtype=dtype, rngs=rngs)


class GroupNorm(nnx.Module):
    """GroupNorm(32, eps 1e-6) over NHWC, statistics in fp32 (taming's `Normalize`).

    Reduces over the spatial axes first (channels stay the contiguous, vectorised axis), then
    over each group's channels, and applies one per-channel scale and shift: about 1.5x faster
    on XLA CPU than flax's GroupNorm, whose reductions dominate the VQ-GAN's non-conv time.
    The variance takes a second pass over (x - mean), which keeps it exact for offset inputs.
    """

    def __init__(self, c: int, dtype, groups: int = 32, eps: float = 1e-6):
        self.scale = nnx.Param(jnp.ones((c,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((c,), jnp.float32))
        self.groups, self.eps, self.dtype = groups, eps, dtype

    def __call__(self, x: Array) -> Array:
        B, H, W, C = x.shape
        per = C // self.groups
        n = H * W * per
        xf = x.astype(jnp.float32)
        group_sum = lambda t: jnp.sum(t, axis=(1, 2)).reshape(B, self.groups, per).sum(-1)
        mean = jnp.repeat(group_sum(xf) / n, per, axis=-1)  # [B, C]
        var = jnp.repeat(group_sum(jnp.square(xf - mean[:, None, None, :])) / n, per, axis=-1)
        a = jax.lax.rsqrt(var + self.eps) * self.scale[...]
        b = self.bias[...] - mean * a
        return (xf * a[:, None, None, :] + b[:, None, None, :]).astype(self.dtype)


def _norm(c: int, rngs: nnx.Rngs, dtype) -> GroupNorm:
    return GroupNorm(c, dtype)


def swish(x: Array) -> Array:
    return x * jax.nn.sigmoid(x)


class ResnetBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, rngs: nnx.Rngs, dtype):
        self.norm1 = _norm(cin, rngs, dtype)
        self.conv1 = _conv(cin, cout, 3, rngs, dtype)
        self.norm2 = _norm(cout, rngs, dtype)
        self.conv2 = _conv(cout, cout, 3, rngs, dtype)
        if cin != cout:
            self.nin_shortcut = _conv(cin, cout, 1, rngs, dtype)

    def __call__(self, x: Array) -> Array:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nnx.Module):
    """Single-head self-attention over the h*w positions (taming's AttnBlock)."""

    def __init__(self, c: int, rngs: nnx.Rngs, dtype):
        self.norm = _norm(c, rngs, dtype)
        self.q = _conv(c, c, 1, rngs, dtype)
        self.k = _conv(c, c, 1, rngs, dtype)
        self.v = _conv(c, c, 1, rngs, dtype)
        self.proj_out = _conv(c, c, 1, rngs, dtype)

    def __call__(self, x: Array) -> Array:
        B, H, W, C = x.shape
        h = self.norm(x)
        q, k, v = (f(h).reshape(B, H * W, C) for f in (self.q, self.k, self.v))
        scores = jnp.einsum("bic,bjc->bij", q, k, preferred_element_type=jnp.float32)
        probs = jax.nn.softmax(scores * C**-0.5, axis=-1).astype(v.dtype)
        out = jnp.einsum("bij,bjc->bic", probs, v).reshape(B, H, W, C)
        return x + self.proj_out(out)


class Downsample(nnx.Module):
    def __init__(self, c: int, rngs: nnx.Rngs, dtype):
        # taming pads (0, 1, 0, 1): one zero row/column after the image, then a VALID conv.
        self.conv = _conv(c, c, 3, rngs, dtype, stride=2, padding=((0, 1), (0, 1)))

    def __call__(self, x: Array) -> Array:
        return self.conv(x)


# Nearest x2 up-sampling then a 3x3 conv, folded: output row 2i+a sees input rows
# (i-1, i) with kernel rows (K0, K1+K2) when a = 0 and (i, i+1) with (K0+K1, K2) when a = 1.
_PHASE_ROWS = {0: ((0,), (1, 2)), 1: ((0, 1), (2,))}


def _phase_kernel(k: Array, a: int, b: int) -> Array:
    """The 2x2 kernel [2, 2, Cin, Cout] of output phase (a, b) from a 3x3 kernel."""
    rows = jnp.stack([sum(k[r] for r in taps) for taps in _PHASE_ROWS[a]])
    return jnp.stack([sum(rows[:, c] for c in taps) for taps in _PHASE_ROWS[b]], axis=1)


class Upsample(nnx.Module):
    """Nearest-neighbour x2, then a 3x3 conv (taming's Upsample with_conv).

    Computed as four 2x2 convolutions on the low-resolution input, one per output phase, with
    the 3x3 kernel's taps summed where up-sampling repeats a pixel: the same function at
    16 instead of 36 multiply-adds per output pixel, and no up-sampled tensor in memory.
    """

    def __init__(self, c: int, rngs: nnx.Rngs, dtype):
        self.conv = _conv(c, c, 3, rngs, dtype)

    def __call__(self, x: Array) -> Array:
        B, H, W, C = x.shape
        k = self.conv.kernel[...].astype(x.dtype)
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        phases = [
            [
                jax.lax.conv_general_dilated(
                    xp[:, a : a + H + 1, b : b + W + 1],
                    _phase_kernel(k, a, b),
                    (1, 1),
                    "VALID",
                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                )
                for b in (0, 1)
            ]
            for a in (0, 1)
        ]
        y = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)  # [B, H, 2, W, 2, C]
        y = y.reshape(B, 2 * H, 2 * W, -1)
        return y + self.conv.bias[...].astype(y.dtype)


class Level(nnx.Module):
    """One resolution level: res blocks (each followed by attention where configured)."""

    def __init__(self, blocks: list[ResnetBlock], attn: list[AttnBlock]):
        self.block = nnx.List(blocks)
        self.attn = nnx.List(attn)

    def __call__(self, x: Array) -> Array:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        return x


class Mid(nnx.Module):
    def __init__(self, c: int, rngs: nnx.Rngs, dtype):
        self.block_1 = ResnetBlock(c, c, rngs, dtype)
        self.attn_1 = AttnBlock(c, rngs, dtype)
        self.block_2 = ResnetBlock(c, c, rngs, dtype)

    def __call__(self, x: Array) -> Array:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nnx.Module):
    def __init__(self, cfg: VQGANConfig, rngs: nnx.Rngs, dtype):
        self.conv_in = _conv(cfg.in_channels, cfg.ch, 3, rngs, dtype)
        levels = []
        res, cin = cfg.resolution, cfg.ch
        n = len(cfg.ch_mult)
        for i, mult in enumerate(cfg.ch_mult):
            cout = cfg.ch * mult
            blocks, attn = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(cin, cout, rngs, dtype))
                cin = cout
                if res in cfg.attn_resolutions:
                    attn.append(AttnBlock(cin, rngs, dtype))
            level = Level(blocks, attn)
            if i != n - 1:
                level.downsample = Downsample(cin, rngs, dtype)
                res //= 2
            levels.append(level)
        self.down = nnx.List(levels)
        self.mid = Mid(cin, rngs, dtype)
        self.norm_out = _norm(cin, rngs, dtype)
        self.conv_out = _conv(cin, cfg.z_channels, 3, rngs, dtype)

    def __call__(self, x: Array) -> Array:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nnx.Module):
    def __init__(self, cfg: VQGANConfig, rngs: nnx.Rngs, dtype):
        n = len(cfg.ch_mult)
        cin = cfg.ch * cfg.ch_mult[-1]
        res = cfg.latent_size
        self.conv_in = _conv(cfg.z_channels, cin, 3, rngs, dtype)
        self.mid = Mid(cin, rngs, dtype)
        levels: list[Level] = [None] * n  # type: ignore[list-item]
        for i in reversed(range(n)):
            cout = cfg.ch * cfg.ch_mult[i]
            blocks, attn = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(cin, cout, rngs, dtype))
                cin = cout
                if res in cfg.attn_resolutions:
                    attn.append(AttnBlock(cin, rngs, dtype))
            level = Level(blocks, attn)
            if i != 0:
                level.upsample = Upsample(cin, rngs, dtype)
                res *= 2
            levels[i] = level
        self.up = nnx.List(levels)  # indexed like taming: up[0] is the finest level
        self.norm_out = _norm(cin, rngs, dtype)
        self.conv_out = _conv(cin, cfg.out_ch, 3, rngs, dtype)

    def body(self, z: Array) -> Array:
        """Everything before the output head (norm_out, swish, conv_out)."""
        h = self.mid(self.conv_in(z))
        for i in reversed(range(len(self.up))):
            level = self.up[i]
            h = level(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return h

    def head_input(self, h: Array) -> Array:
        """The input of `conv_out`, the layer taming's adaptive GAN weight looks at."""
        return swish(self.norm_out(h))

    def __call__(self, z: Array) -> Array:
        return self.conv_out(self.head_input(self.body(z)))


class Quantized(NamedTuple):
    z_q: Array  # [B, h, w, embed_dim], straight-through: gradients flow to the encoder
    codes: Array  # [B, h*w] int32, raster order
    loss: Array  # codebook + commitment loss (scalar)


class VectorQuantizer(nnx.Module):
    """taming's VectorQuantizer2 (without index remapping)."""

    def __init__(self, n_embed: int, embed_dim: int, beta: float, legacy: bool, rngs: nnx.Rngs):
        self.beta, self.legacy = beta, legacy
        init = jax.random.uniform(
            rngs.params(), (n_embed, embed_dim), minval=-1.0 / n_embed, maxval=1.0 / n_embed
        )
        self.embedding = nnx.Embed(n_embed, embed_dim, rngs=rngs)
        self.embedding.embedding[...] = init

    def codes(self, z: Array) -> Array:
        """Nearest codebook entry of each vector z [..., embed_dim] -> int32 [...].

        argmin_e |z - e|^2 = argmin_e (|e|^2 - 2 z.e): the |z|^2 term taming adds is the same
        for every e, so it is left out (it only adds rounding).
        """
        e = self.embedding.embedding[...].astype(jnp.float32)
        zf = z.astype(jnp.float32)
        d = jnp.sum(e**2, axis=-1) - 2.0 * jnp.einsum("...d,nd->...n", zf, e)
        return jnp.argmin(d, axis=-1).astype(jnp.int32)

    def lookup(self, codes: Array) -> Array:
        return jnp.take(self.embedding.embedding[...], codes, axis=0)

    def __call__(self, z: Array) -> Quantized:
        codes = self.codes(z)
        z_q = self.lookup(codes).astype(z.dtype)
        sg = jax.lax.stop_gradient
        codebook = jnp.mean((z_q - sg(z)) ** 2)  # moves the codes
        commit = jnp.mean((sg(z_q) - z) ** 2)  # moves the encoder
        # legacy=True (taming's default, used by LLM-CXR) puts beta on the codebook term.
        loss = commit + self.beta * codebook if self.legacy else self.beta * commit + codebook
        z_q = z + sg(z_q - z)
        return Quantized(z_q, codes.reshape(codes.shape[0], -1), loss)


class VQGAN(nnx.Module):
    """Encoder -> quant_conv -> VectorQuantizer -> post_quant_conv -> Decoder (taming VQModel)."""

    def __init__(self, config: VQGANConfig, *, rngs: nnx.Rngs):
        self.config = config
        dt = jnp.dtype(config.dtype)
        self.encoder = Encoder(config, rngs, dt)
        self.decoder = Decoder(config, rngs, dt)
        self.quant_conv = _conv(config.z_channels, config.embed_dim, 1, rngs, dt)
        self.post_quant_conv = _conv(config.embed_dim, config.z_channels, 1, rngs, dt)
        self.quantize = VectorQuantizer(
            config.n_embed, config.embed_dim, config.beta, config.legacy, rngs
        )

    def as_input(self, images: Array) -> Array:
        """Images [B, H, W, C] (C = 3 or 1) as the encoder takes them (`to_channels`)."""
        return to_channels(images, self.config.in_channels)

    def quantized(self, images: Array) -> Quantized:
        """Images [B, H, W, 3 or 1] in [-1, 1] -> quantized latents, codes and codebook loss."""
        return self.quantize(self.quant_conv(self.encoder(self.as_input(images))))

    def encode(self, images: Array) -> Array:
        """Images [B, H, W, 3 or 1] in [-1, 1] -> codes [B, h*w] int32 (raster order)."""
        z = self.quant_conv(self.encoder(self.as_input(images)))
        return self.quantize.codes(z).reshape(z.shape[0], -1)

    def decode_latents(self, z_q: Array) -> Array:
        return self.decoder(self.post_quant_conv(z_q)).astype(jnp.float32)

    def decode(self, codes: Array) -> Array:
        """Codes [B, h*w] -> images [B, H, W, out_ch] (not clipped: clip to [-1, 1] to display)."""
        n = self.config.latent_size
        if codes.shape[-1] != n * n:
            raise ValueError(f"expected {n * n} codes per image, got {codes.shape[-1]}")
        z_q = self.quantize.lookup(codes.reshape(codes.shape[0], n, n))
        return self.decode_latents(z_q.astype(jnp.dtype(self.config.dtype)))

    def __call__(self, images: Array) -> tuple[Array, Quantized]:
        """Reconstruction [B, H, W, out_ch] and the quantizer's outputs (what training needs)."""
        q = self.quantized(images)
        return self.decode_latents(q.z_q), q
