"""Weights of VQ-GAN training's loss networks: LPIPS and the PatchGAN discriminator.

Both directions go through `mapping.py` tables, generated from the config (never hand-listed):

LPIPS (models/lpips.py) reads either
  (a) taming's own names, as in a taming VQ-GAN training checkpoint under
      `loss.perceptual_loss.` (or a bare `LPIPS().state_dict()` with prefix ""):
      `net.slice{k}.{n}.weight|bias` (k = 1..5, n = torchvision's `features` index, which
      taming keeps inside each slice), `lin{k}.model.1.weight` (k = 0..4) and the
      `scaling_layer.shift|scale` buffers (checked against our constants, then dropped); or
  (b) two files: a torchvision `vgg16` state dict (`features.{n}.weight|bias`; `classifier.*`
      ignored) and the LPIPS heads as the `lpips` package and taming's `vgg.pth` ship them
      (`lin{k}.model.1.weight`).
  Export writes (a), scaling buffers included, so taming's `LPIPS` loads it with strict=True.

The discriminator (models/discriminator.py) reads and writes taming's
`NLayerDiscriminator` keys under `loss.discriminator.` (or "" for a bare module):
`main.{n}.weight|bias` for convs, `main.{n}.weight|bias|running_mean|running_var|
num_batches_tracked` for BatchNorm, `main.{n}.loc|scale|initialized` for ActNorm. Our BatchNorm
keeps no `num_batches_tracked` (PyTorch ignores it at a fixed momentum): import accepts and drops
it, export writes int64 zeros so `load_state_dict(strict=True)` works.

Entry points: `import_lpips(vgg, lin)` and `import_lpips_from_taming(ckpt)` give an `LPIPS`
model from files or state dicts; `lpips_params*` and `import_discriminator` give variable trees,
`nnx.to_pure_dict(nnx.state(model, (nnx.Param, nnx.BatchStat)))`, which `export_*` take back.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

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
from llmcxr_jax.models.discriminator import (
    ActNorm,
    BatchNorm2d,
    DiscriminatorConfig,
    NLayerDiscriminator,
)
from llmcxr_jax.models.lpips import LPIPS, SCALE, SHIFT, LPIPSConfig

# Where a taming VQ-GAN training checkpoint (VQModel.loss = VQLPIPSWithDiscriminator) keeps them.
TAMING_LPIPS_PREFIX = "loss.perceptual_loss."
TAMING_DISC_PREFIX = "loss.discriminator."

# ActNorm's loc/scale are [1, C, 1, 1] in taming, [C] here.
PER_CHANNEL = Transform(lambda w, ctx: w.reshape(-1), lambda x, ctx: x.reshape(1, -1, 1, 1))


def _subset(state_dict: Mapping[str, Any], prefix: str) -> DictSource:
    """The tensors under `prefix` (the rest of a training checkpoint is someone else's)."""
    return DictSource({k: v for k, v in state_dict.items() if k.startswith(prefix)})


# --------------------------------------------------------------------------------------------
# LPIPS
# --------------------------------------------------------------------------------------------


def _vgg_rules(config: LPIPSConfig, key: str) -> list[Rule]:
    """One rule per VGG conv weight and bias; `key` is formatted with k (1-based slice), n."""
    out = []
    for s, indices in enumerate(config.torch_indices):
        for j, n in enumerate(indices):
            base = key.format(k=s + 1, n=n)
            path = ("net", "slices", s, "convs", j)
            out += [Rule(f"{base}.weight", (*path, "kernel"), CONV)]
            out += [Rule(f"{base}.bias", (*path, "bias"), IDENTITY)]
    return out


def _lin_rules(config: LPIPSConfig, prefix: str) -> list[Rule]:
    return [
        Rule(f"{prefix}lin{k}.model.1.weight", ("lins", k, "conv", "kernel"), CONV)
        for k in range(len(config.channels))
    ]


def lpips_rules(config: LPIPSConfig, prefix: str = TAMING_LPIPS_PREFIX) -> list[Rule]:
    """The table in taming's naming (source (a))."""
    return _vgg_rules(config, prefix + "net.slice{k}.{n}") + _lin_rules(config, prefix)


def torchvision_vgg_rules(config: LPIPSConfig) -> list[Rule]:
    """The trunk's table in torchvision's `vgg16().state_dict()` naming (source (b))."""
    return _vgg_rules(config, "features.{n}")


def _lpips_shapes(config: LPIPSConfig) -> dict[tuple, tuple[int, ...]]:
    return tree_shapes(common.variables_of(common.abstract(LPIPS, config)))


def _scaling_keys(prefix: str) -> dict[str, tuple[float, ...]]:
    return {f"{prefix}scaling_layer.shift": SHIFT, f"{prefix}scaling_layer.scale": SCALE}


def _check_scaling(source: DictSource, prefix: str, where: str) -> re.Pattern:
    """Scaling buffers, if present, must hold taming's constants; returns the pattern to skip."""
    for key, want in _scaling_keys(prefix).items():
        if key in source:
            got = source.get(key)
            if got.size != 3 or not np.allclose(got.reshape(-1), want, rtol=0, atol=1e-6):
                raise ConversionError(
                    f"{where}: {key} is {got.reshape(-1).tolist()} (shape {got.shape}), "
                    f"expected taming's constants {list(want)}"
                )
    return re.compile("^" + re.escape(prefix) + r"scaling_layer\.(shift|scale)$")


def lpips_params(
    state_dict: Mapping[str, Any],
    config: LPIPSConfig | None = None,
    *,
    prefix: str = TAMING_LPIPS_PREFIX,
    where: str = "state dict",
) -> dict[str, Any]:
    """Our LPIPS variable tree from taming-named tensors under `prefix` (source (a)).

    Keys outside `prefix` are not looked at (a whole training checkpoint may be passed).
    """
    config = config or LPIPSConfig()
    source = _subset(state_dict, prefix)
    skip = _check_scaling(source, prefix, where)
    shapes = _lpips_shapes(config)
    return read_params(
        lpips_rules(config, prefix), source, shapes, config, where=where, ignore=skip
    )


def lpips_params_torchvision(
    vgg_state_dict: Mapping[str, Any],
    lin_state_dict: Mapping[str, Any],
    config: LPIPSConfig | None = None,
    *,
    where: tuple[str, str] = ("vgg16 state dict", "LPIPS lin state dict"),
) -> dict[str, Any]:
    """Our LPIPS variable tree from torchvision's vgg16 and the LPIPS heads (source (b))."""
    config = config or LPIPSConfig()
    shapes = _lpips_shapes(config)
    net = read_params(
        torchvision_vgg_rules(config),
        DictSource(vgg_state_dict),
        {p: s for p, s in shapes.items() if p[0] == "net"},
        config,
        where=where[0],
        ignore=re.compile(r"^classifier\."),
    )
    lin_source = DictSource(lin_state_dict)
    lins = read_params(
        _lin_rules(config, ""),
        lin_source,
        {p: s for p, s in shapes.items() if p[0] == "lins"},
        config,
        where=where[1],
        ignore=_check_scaling(lin_source, "", where[1]),
    )
    return {**net, **lins}


StateOrPath = Mapping[str, Any] | str | os.PathLike


def _state(x: StateOrPath, *, key: str | None, default: str) -> tuple[Mapping[str, Any], str]:
    """(state dict, name for errors) of an in-memory state dict or a weights-only torch file."""
    if isinstance(x, Mapping):
        return x, default
    return load_torch_state_dict(x, key=key), str(x)


def import_lpips_from_taming(
    ckpt: StateOrPath,
    config: LPIPSConfig | None = None,
    *,
    prefix: str = TAMING_LPIPS_PREFIX,
) -> LPIPS:
    """The LPIPS model of a taming training checkpoint (file or state dict; source (a))."""
    config = config or LPIPSConfig()
    state, where = _state(ckpt, key="state_dict", default="state dict")
    return common.with_variables(
        LPIPS, config, lpips_params(state, config, prefix=prefix, where=where)
    )


def import_lpips(vgg: StateOrPath, lin: StateOrPath, config: LPIPSConfig | None = None) -> LPIPS:
    """The LPIPS model of torchvision's vgg16 weights and the LPIPS heads (`vgg.pth`), each a
    file or a state dict (source (b))."""
    config = config or LPIPSConfig()
    vgg_state, vgg_where = _state(vgg, key=None, default="vgg16 state dict")
    lin_state, lin_where = _state(lin, key=None, default="LPIPS lin state dict")
    tree = lpips_params_torchvision(vgg_state, lin_state, config, where=(vgg_where, lin_where))
    return common.with_variables(LPIPS, config, tree)


def export_lpips(
    params: Mapping[str, Any],
    config: LPIPSConfig | None = None,
    *,
    prefix: str = TAMING_LPIPS_PREFIX,
) -> dict[str, np.ndarray]:
    """taming's LPIPS state dict (numpy, scaling buffers included) of our variable tree."""
    config = config or LPIPSConfig()
    out = dict(torch_tensors(lpips_rules(config, prefix), params, config))
    for key, value in _scaling_keys(prefix).items():
        out[key] = np.asarray(value, np.float32).reshape(1, 3, 1, 1)
    return out


# --------------------------------------------------------------------------------------------
# Discriminator
# --------------------------------------------------------------------------------------------

# Our leaf name -> (taming's name, transform), per kind of layer in `main`.
_CONV_LEAVES = {"kernel": ("weight", CONV), "bias": ("bias", IDENTITY)}
_BN_LEAVES = {
    "scale": ("weight", IDENTITY),
    "bias": ("bias", IDENTITY),
    "mean": ("running_mean", IDENTITY),
    "var": ("running_var", IDENTITY),
}
_ACTNORM_LEAVES = {"loc": ("loc", PER_CHANNEL), "scale": ("scale", PER_CHANNEL)}


def _disc_layers(config: DiscriminatorConfig) -> tuple[dict, list[int]]:
    """(our variable shapes, indices of the norm layers in `main`)."""
    model = common.abstract(NLayerDiscriminator, config)
    norms = [n for n, m in enumerate(model.main) if isinstance(m, (BatchNorm2d, ActNorm))]
    return tree_shapes(common.variables_of(model)), norms


def discriminator_rules(
    config: DiscriminatorConfig, prefix: str = TAMING_DISC_PREFIX
) -> list[Rule]:
    """The table (taming's naming) for a config: one rule per learned tensor and statistic."""
    shapes, norms = _disc_layers(config)
    out = []
    for path in shapes:
        _, n, leaf = path
        if leaf == "initialized":  # ActNorm's flag: an integer, converted beside the table
            continue
        if n not in norms:
            leaves = _CONV_LEAVES
        else:
            leaves = _ACTNORM_LEAVES if config.use_actnorm else _BN_LEAVES
        name, transform = leaves[leaf]
        out.append(Rule(f"{prefix}main.{n}.{name}", path, transform))
    return out


def import_discriminator(
    state_dict: Mapping[str, Any],
    config: DiscriminatorConfig | None = None,
    *,
    prefix: str = TAMING_DISC_PREFIX,
    where: str = "state dict",
) -> dict[str, Any]:
    """Our discriminator variable tree from taming's `NLayerDiscriminator` keys under `prefix`."""
    config = config or DiscriminatorConfig()
    shapes, norms = _disc_layers(config)
    source = _subset(state_dict, prefix)
    buffer = "initialized" if config.use_actnorm else "num_batches_tracked"
    tree = read_params(
        discriminator_rules(config, prefix),
        source,
        {p: s for p, s in shapes.items() if p[-1] != "initialized"},
        config,
        where=where,
        ignore=re.compile("^" + re.escape(prefix) + rf"main\.\d+\.{buffer}$"),
    )
    if config.use_actnorm:
        for n in norms:
            key = f"{prefix}main.{n}.initialized"
            if key not in source:
                raise ConversionError(f"{where}: missing tensor {key} (expected shape ())")
            if source.shape(key) != ():
                raise ConversionError(
                    f"{where}: tensor {key} has shape {source.shape(key)}, expected ()"
                )
            tree["main"][n]["initialized"] = np.asarray(source.get(key) != 0, np.uint8)
    return tree


def export_discriminator(
    params: Mapping[str, Any],
    config: DiscriminatorConfig | None = None,
    *,
    prefix: str = TAMING_DISC_PREFIX,
) -> dict[str, np.ndarray]:
    """taming's `NLayerDiscriminator` state dict (numpy) of our variable tree."""
    config = config or DiscriminatorConfig()
    _, norms = _disc_layers(config)
    out = dict(torch_tensors(discriminator_rules(config, prefix), params, config))
    for n in norms:
        if config.use_actnorm:
            flag = np.asarray(params["main"][n]["initialized"])
            out[f"{prefix}main.{n}.initialized"] = flag.astype(np.uint8).reshape(())
        else:
            out[f"{prefix}main.{n}.num_batches_tracked"] = np.zeros((), np.int64)
    return out


def load_discriminator_checkpoint(
    path: str | os.PathLike,
    config: DiscriminatorConfig | None = None,
    *,
    prefix: str = TAMING_DISC_PREFIX,
) -> dict[str, Any]:
    """`import_discriminator` of a taming/Lightning checkpoint or a bare state dict file."""
    state = load_torch_state_dict(path)
    return import_discriminator(state, config, prefix=prefix, where=str(path))
