"""What an accelerator can do at best, by its `device_kind`, and what a training token costs.

MFU and a decoding floor need two figures per chip: the dense bf16 matmul peak (no sparsity)
and the HBM bandwidth, both the vendors' published numbers. They live here, jax-free (plain
tables and arithmetic), so the training loop's progress line and `benchmarks/accelerator.py`
(whose parent process formats results without starting a backend) read the same table. An
unknown kind (every CPU) gives None: MFU is then not stated rather than guessed.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Accelerator:
    name: str
    needles: tuple[str, ...]  # all of these occur in the lower-cased device_kind
    peak_bf16_flops: float  # dense, per chip
    hbm_bytes_per_s: float  # per chip


# More specific entries first: the first whose needles all occur wins ("NVIDIA H100 PCIe"
# before "NVIDIA H100 80GB HBM3", "TPU v5 lite" before "TPU v5").
ACCELERATORS: tuple[Accelerator, ...] = (
    Accelerator("H100 PCIe", ("h100", "pcie"), 756e12, 2.0e12),
    Accelerator("H100 NVL", ("h100", "nvl"), 835e12, 3.9e12),
    Accelerator("H100 SXM", ("h100",), 989e12, 3.35e12),
    Accelerator("H200", ("h200",), 989e12, 4.8e12),
    Accelerator("A100 80GB", ("a100", "80gb"), 312e12, 2.0e12),
    Accelerator("A100 40GB", ("a100",), 312e12, 1.555e12),
    Accelerator("TPU v4", ("tpu v4",), 275e12, 1.2e12),
    Accelerator("TPU v5e", ("tpu v5 lite",), 197e12, 0.82e12),
    Accelerator("TPU v5e", ("tpu v5e",), 197e12, 0.82e12),
    Accelerator("TPU v5p", ("tpu v5",), 459e12, 2.76e12),
    Accelerator("TPU v6e", ("tpu v6",), 918e12, 1.64e12),
)


def lookup(device_kind: str) -> Accelerator | None:
    """The table's entry for a `jax.devices()[0].device_kind` (or torch's device name)."""
    kind = device_kind.lower()
    return next((a for a in ACCELERATORS if all(n in kind for n in a.needles)), None)


def peak_flops(device_kind: str) -> float | None:
    """Dense bf16 FLOP/s of one chip of this kind, None where unknown (CPUs)."""
    a = lookup(device_kind)
    return a.peak_bf16_flops if a else None


def hbm_bandwidth(device_kind: str) -> float | None:
    """HBM bytes/s of one chip of this kind, None where unknown (CPUs)."""
    a = lookup(device_kind)
    return a.hbm_bytes_per_s if a else None


def flops_per_token(cfg: Any, seq_len: int) -> float:
    """Training FLOPs per token of a GPT-NeoX config: 6 x (matmul parameters) + 12 L D T.

    The matmul parameters are all but the input embedding (a lookup); 12 L D T is attention's
    QK^T and PV over the full T x T square, forward and backward (PaLM's convention: the causal
    half is not discounted, so figures compare with published MFUs). Remat's recomputation is
    not counted: this is model FLOPs, not hardware FLOPs."""
    n = cfg.num_params() - cfg.vocab_size * cfg.hidden_size
    return 6.0 * n + 12.0 * cfg.num_layers * cfg.hidden_size * seq_len


def mfu(tokens_per_s_per_device: float, flops_token: float, device_kind: str) -> float | None:
    """Model FLOPs utilisation of one chip, None where its peak is unknown."""
    peak = peak_flops(device_kind)
    return tokens_per_s_per_device * flops_token / peak if peak else None


def markdown_table() -> str:
    """The table above as Markdown (benchmarks print it next to their MFU)."""
    lines = [
        "| device_kind contains | chip | peak bf16 dense TFLOP/s | HBM TB/s |",
        "|---|---|---|---|",
    ]
    for a in ACCELERATORS:
        lines.append(
            f"| {' + '.join(a.needles)} | {a.name} | {a.peak_bf16_flops / 1e12:.0f} | "
            f"{a.hbm_bytes_per_s / 1e12:.2f} |"
        )
    lines.append("| anything else (CPUs) | - | n/a | n/a |")
    return "\n".join(lines)
