"""taming-transformers VQ-GAN checkpoints <-> our NNX VQ-GAN, both directions from one table.

Our modules are named like taming's (`encoder.down.0.block.1.norm1`, `quantize.embedding`, ...),
so the table is generated from the model's own variable paths: the last path element says what
the tensor is (a conv kernel, a GroupNorm scale, a bias, the codebook) and how it converts.

Reads a taming/Lightning `.ckpt` (its `state_dict`, through `torch.load(weights_only=True)`) and
taming's YAML config (`model.params.ddconfig`, `embed_dim`, `n_embed`). The `loss.*` tensors of
a training checkpoint (LPIPS and the discriminator) are not part of the VQ-GAN: `import_taming`
counts and reports them; the training code ports the discriminator and LPIPS separately
(convert/lpips.py). Exports a state dict that taming's `Encoder`, `Decoder`,
`VectorQuantizer2`, `quant_conv` and `post_quant_conv` load with `strict=True`, plus a YAML.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from llmcxr_jax.convert.mapping import (
    CONV,
    IDENTITY,
    ConversionError,
    DictSource,
    Rule,
    Transform,
    load_torch_state_dict,
    read_params,
    torch_tensors,
    tree_shapes,
)
from llmcxr_jax.models import common
from llmcxr_jax.models.vqgan import VQGAN, VQGANConfig

VQMODEL_TARGETS = ("taming.models.vqgan.VQModel",)
LOSS_KEYS = re.compile(r"^loss\.")

# What the last element of one of our variable paths is, in taming's naming.
LEAVES: dict[str, tuple[str, Transform]] = {
    "kernel": ("weight", CONV),  # nnx.Conv HWIO <-> torch OIHW
    "scale": ("weight", IDENTITY),  # GroupNorm
    "bias": ("bias", IDENTITY),
    "embedding": ("weight", IDENTITY),  # the codebook, nn.Embedding [n_embed, embed_dim]
}


def rules(config: VQGANConfig) -> list[Rule]:
    """The mapping table for a config: one rule per variable of our VQ-GAN."""
    out = []
    for path in tree_shapes(common.variables_of(common.abstract(VQGAN, config))):
        name, transform = LEAVES[path[-1]]
        key = ".".join(str(p) for p in path[:-1]) + "." + name
        out.append(Rule(key, path, transform))
    return out


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


def config_from_taming(cfg: dict[str, Any], *, source: str = "config") -> VQGANConfig:
    """Our config from taming's YAML (the whole file, or its `model` section)."""
    model = cfg.get("model", cfg)
    target = model.get("target")
    if target not in VQMODEL_TARGETS:
        raise ConversionError(
            f"{source}: model.target {target!r} is not supported; only {VQMODEL_TARGETS[0]} "
            "(Gumbel, EMA and segmentation variants are not)"
        )
    p = model.get("params", {})
    dd = p.get("ddconfig", {})
    if dd.get("double_z", False):
        raise ConversionError(f"{source}: ddconfig.double_z=true is a VAE setting, not a VQ-GAN")
    if p.get("remap"):
        raise ConversionError(f"{source}: codebook index remapping is not supported")
    try:
        return VQGANConfig(
            resolution=int(dd["resolution"]),
            in_channels=int(dd["in_channels"]),
            out_ch=int(dd["out_ch"]),
            ch=int(dd["ch"]),
            ch_mult=tuple(int(m) for m in dd["ch_mult"]),
            num_res_blocks=int(dd["num_res_blocks"]),
            attn_resolutions=tuple(int(r) for r in dd["attn_resolutions"]),
            z_channels=int(dd["z_channels"]),
            embed_dim=int(p["embed_dim"]),
            n_embed=int(p["n_embed"]),
            dropout=float(dd.get("dropout", 0.0)),
        )
    except KeyError as e:
        raise ConversionError(f"{source}: missing field {e.args[0]!r}") from e
    except ValueError as e:
        raise ConversionError(f"{source}: {e}") from e


def config_to_taming(c: VQGANConfig) -> dict[str, Any]:
    """taming's YAML for a config (the VQ-GAN part; no loss section)."""
    return {
        "model": {
            "target": VQMODEL_TARGETS[0],
            "params": {
                "embed_dim": c.embed_dim,
                "n_embed": c.n_embed,
                "ddconfig": {
                    "double_z": False,
                    "z_channels": c.z_channels,
                    "resolution": c.resolution,
                    "in_channels": c.in_channels,
                    "out_ch": c.out_ch,
                    "ch": c.ch,
                    "ch_mult": list(c.ch_mult),
                    "num_res_blocks": c.num_res_blocks,
                    "attn_resolutions": list(c.attn_resolutions),
                    "dropout": c.dropout,
                },
            },
        }
    }


def read_taming_config(path: str | os.PathLike) -> VQGANConfig:
    try:
        cfg = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConversionError(f"{path}: unreadable YAML ({e})") from e
    if not isinstance(cfg, dict):
        raise ConversionError(f"{path}: not a taming config")
    return config_from_taming(cfg, source=str(path))


# --------------------------------------------------------------------------------------------
# Both directions
# --------------------------------------------------------------------------------------------


def import_state_dict(
    state_dict: dict[str, Any], config: VQGANConfig, *, where: str = "state dict"
) -> tuple[dict[str, Any], list[str]]:
    """Our variable tree from a taming state dict; also returns the `loss.*` keys it skipped."""
    shapes = tree_shapes(common.variables_of(common.abstract(VQGAN, config)))
    params = read_params(
        rules(config), DictSource(state_dict), shapes, config, where=where, ignore=LOSS_KEYS
    )
    return params, sorted(k for k in state_dict if LOSS_KEYS.search(k))


def import_taming(
    ckpt: str | os.PathLike, config_yaml: str | os.PathLike
) -> tuple[VQGANConfig, dict[str, Any], list[str]]:
    """(config, variable tree, skipped loss.* keys) of a taming checkpoint and its YAML."""
    config = read_taming_config(config_yaml)
    state = load_torch_state_dict(ckpt)
    params, skipped = import_state_dict(state, config, where=str(ckpt))
    return config, params, skipped


def load_taming_model(ckpt: str | os.PathLike, config_yaml: str | os.PathLike) -> VQGAN:
    config, params, _ = import_taming(ckpt, config_yaml)
    return common.with_variables(VQGAN, config, params)


def export_state_dict(config: VQGANConfig, params: dict[str, Any]) -> dict[str, np.ndarray]:
    """taming's state dict (numpy arrays) of our variable tree."""
    return dict(torch_tensors(rules(config), params, config))


def export_taming(
    config: VQGANConfig, params: dict[str, Any], out_ckpt: str | os.PathLike
) -> tuple[Path, Path]:
    """Write `{"state_dict": ...}` (torch.save, loadable with weights_only=True) and a YAML."""
    import torch

    out = Path(out_ckpt)
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: torch.from_numpy(v) for k, v in export_state_dict(config, params).items()}
    torch.save({"state_dict": tensors}, out)
    yaml_path = out.with_suffix(".yaml")
    yaml_path.write_text(yaml.safe_dump(config_to_taming(config), sort_keys=False))
    return out, yaml_path


def taming_modules(config: VQGANConfig):
    """taming's own PyTorch modules for `config`, in one `torch.nn.Module` whose state-dict keys
    are the exported ones: load `export_state_dict`'s tensors with `strict=True`.

    Needs torch and taming-transformers (`pip install 'llmcxr_jax[port]'` and
    `pip install --no-deps taming-transformers-rom1504==0.0.6`; Lightning is not needed).
    `encode(x)` takes NCHW images in [-1, 1] and returns codes [B, h*w]; `decode(codes)` returns
    NCHW images.
    """
    import torch
    from taming.modules.diffusionmodules.model import Decoder, Encoder
    from taming.modules.vqvae.quantize import VectorQuantizer2

    class TamingVQ(torch.nn.Module):
        def __init__(self):
            super().__init__()
            dd = dict(
                ch=config.ch,
                out_ch=config.out_ch,
                ch_mult=config.ch_mult,
                num_res_blocks=config.num_res_blocks,
                attn_resolutions=config.attn_resolutions,
                dropout=config.dropout,
                in_channels=config.in_channels,
                resolution=config.resolution,
                z_channels=config.z_channels,
                double_z=False,
            )
            self.encoder = Encoder(**dd)
            self.decoder = Decoder(**dd)
            self.quantize = VectorQuantizer2(
                config.n_embed, config.embed_dim, beta=config.beta, legacy=config.legacy
            )
            self.quant_conv = torch.nn.Conv2d(config.z_channels, config.embed_dim, 1)
            self.post_quant_conv = torch.nn.Conv2d(config.embed_dim, config.z_channels, 1)

        def quantized(self, x):
            """(z_q, codebook loss, codes [B, h*w]) as taming's VQModel.encode computes them."""
            z_q, loss, (_, _, idx) = self.quantize(self.quant_conv(self.encoder(x)))
            return z_q, loss, idx.reshape(x.shape[0], -1)

        def encode(self, x):
            return self.quantized(x)[2]

        def decode(self, codes):
            n = config.latent_size
            z_q = self.quantize.get_codebook_entry(codes.reshape(-1), (codes.shape[0], n, n, -1))
            return self.decoder(self.post_quant_conv(z_q))

    return TamingVQ()
