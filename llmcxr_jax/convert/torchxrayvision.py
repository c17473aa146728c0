"""torchxrayvision DenseNet weights <-> our NNX DenseNet, both directions from one table.

`rules(config)` lists, for every parameter and BatchNorm statistic of `DenseNet`, its key in
the state dict of `xrv.models.DenseNet` (torchvision's naming: `features.conv0.weight`,
`features.denseblock{k}.denselayer{j}.norm1.running_mean`, `features.transition{k}.conv.weight`,
`features.norm5.*`, `classifier.*`) and how the tensor converts (OIHW <-> HWIO convolutions,
transposed linear weight, BatchNorm weight/bias/running_mean/running_var <-> scale/bias/mean/
var). It is generated from the config's block and layer counts. Import is strict (a missing
tensor, a wrong shape or a tensor no rule asks for is an error naming the key); the
`num_batches_tracked` counters and xrv's `op_threshs` buffer (present in the state dict of a
model built with `weights=...`) hold no parameters and are skipped. Export writes what
`load_state_dict(strict=True)` wants: the table's tensors plus every `num_batches_tracked` as a
0 int64 scalar, and `op_threshs` only when asked (a model built without `weights=` has no such
buffer; one built with them has it).

The released `.pt` files (e.g. `nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-
lr001-rot45-tr15-sc15-seed0-best.pt` for "densenet121-res224-all") are whole pickled models,
which `torch.load(weights_only=True)` refuses to run. Convert them once, where torchxrayvision
is installed:

    model = xrv.models.DenseNet(weights="densenet121-res224-all")
    torch.save(model.state_dict(), "xrv-densenet121-all.pt")

then `import_xrv("xrv-densenet121-all.pt", PRESETS["densenet121-xrv"])`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmcxr_jax.convert.mapping import (
    CONV,
    IDENTITY,
    LINEAR,
    ConversionError,
    DictSource,
    Rule,
    load_torch_state_dict,
    read_params,
    torch_tensors,
    tree_shapes,
)
from llmcxr_jax.models.densenet import (
    PRESETS,
    DenseNet,
    DenseNetConfig,
    abstract_model,
    model_from_variables,
    variables_of,
)

# Tensors of an xrv state dict that are not parameters: BatchNorm step counters (unused with a
# fixed momentum) and the operating-point thresholds (a calibration constant, see op_norm).
IGNORED_KEYS = re.compile(r"(^|\.)num_batches_tracked$|^op_threshs$")

# PyTorch BatchNorm2d tensor -> our BatchNorm variable.
_BN_LEAVES = (
    ("weight", "scale"),
    ("bias", "bias"),
    ("running_mean", "mean"),
    ("running_var", "var"),
)


def _norm_rules(key: str, path: tuple[str | int, ...]) -> list[Rule]:
    return [Rule(f"{key}.{t}", (*path, ours), IDENTITY) for t, ours in _BN_LEAVES]


def _conv_rule(key: str, path: tuple[str | int, ...]) -> Rule:
    return Rule(f"{key}.weight", (*path, "kernel"), CONV)


def rules(config: DenseNetConfig) -> list[Rule]:
    """The mapping table for a config, in the state dict's order."""
    out = [_conv_rule("features.conv0", ("conv0",)), *_norm_rules("features.norm0", ("norm0",))]
    last = len(config.block_config) - 1
    for b, num_layers in enumerate(config.block_config):
        for j in range(num_layers):
            key = f"features.denseblock{b + 1}.denselayer{j + 1}"
            path = ("denseblocks", b, "layers", j)
            out += _norm_rules(f"{key}.norm1", (*path, "norm1"))
            out.append(_conv_rule(f"{key}.conv1", (*path, "conv1")))
            out += _norm_rules(f"{key}.norm2", (*path, "norm2"))
            out.append(_conv_rule(f"{key}.conv2", (*path, "conv2")))
        if b < last:
            key, path = f"features.transition{b + 1}", ("transitions", b)
            out += _norm_rules(f"{key}.norm", (*path, "norm"))
            out.append(_conv_rule(f"{key}.conv", (*path, "conv")))
    out += _norm_rules("features.norm5", ("norm5",))
    out.append(Rule("classifier.weight", ("classifier", "kernel"), LINEAR))
    out.append(Rule("classifier.bias", ("classifier", "bias"), IDENTITY))
    return out


# --------------------------------------------------------------------------------------------
# Both directions
# --------------------------------------------------------------------------------------------


def import_xrv(
    path_or_state_dict: str | os.PathLike | Mapping[str, Any],
    config: DenseNetConfig = PRESETS["densenet121-xrv"],
) -> DenseNet:
    """Our DenseNet from an xrv/torchvision DenseNet state dict (a dict, or a file holding one)."""
    if isinstance(path_or_state_dict, Mapping):
        state, where = path_or_state_dict, "state dict"
    else:
        state, where = load_torch_state_dict(path_or_state_dict), str(Path(path_or_state_dict))
    shapes = tree_shapes(variables_of(abstract_model(config)))
    tree = read_params(
        rules(config), DictSource(state), shapes, config, where=where, ignore=IGNORED_KEYS
    )
    return model_from_variables(config, tree)


def export_xrv(
    model: DenseNet, *, op_threshs: Sequence[float] | None = None
) -> dict[str, np.ndarray]:
    """The state dict `xrv.models.DenseNet(...).load_state_dict(strict=True)` accepts (numpy).

    Pass `op_threshs` (e.g. `XRV_ALL_OP_THRESHS`) when loading into a model built with
    `weights=...`, whose `op_threshs` buffer is then part of its state dict.
    """
    config = model.config
    out: dict[str, np.ndarray] = {}
    for key, tensor in torch_tensors(rules(config), variables_of(model), config):
        out[key] = tensor
        if key.endswith(".running_var"):  # PyTorch's order: ..., running_var, counter
            out[key.removesuffix("running_var") + "num_batches_tracked"] = np.zeros((), np.int64)
    if op_threshs is not None:
        t = np.asarray(op_threshs, np.float32)
        if t.shape != (config.num_classes,):
            raise ConversionError(
                f"op_threshs has shape {t.shape}, expected ({config.num_classes},)"
            )
        out["op_threshs"] = t
    return out


def save_xrv(model: DenseNet, path: str | os.PathLike, **kwargs: Any) -> None:
    """Write `export_xrv(model)` as a PyTorch state-dict file (`torch.save`)."""
    import torch

    torch.save(
        {k: torch.from_numpy(np.array(v)) for k, v in export_xrv(model, **kwargs).items()}, path
    )
