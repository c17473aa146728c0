"""Loading a dolly-v2-3b-sized checkpoint: peak resident memory against the checkpoint's size.

A 3B model is 11.1 GB in fp32. Restoring it must not need twice that (a host copy of the whole
tree, then a converted copy): `checkpoint.load_model` restores every array straight into its
target dtype and placement, and `cpu_int8.Int8GPTNeoX.from_checkpoint` reads one layer of one
parameter at a time (checkpoints store a chunk per layer) and quantises it before reading on.
Here a checkpoint of dolly-v2-3b's shapes with the 51,305-row vocabulary (random weights) is
written once, then each way of loading it runs in its own process, which reports its peak
resident memory and time.

    python benchmarks/load_3b.py [--dir /tmp/llmcxr-3b] [--keep] [--layers 32]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

VOCAB = 51305
WAYS = ("fp32", "bf16", "int8")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def write(path: Path, layers: int) -> float:
    """A random dolly-v2-3b-shaped checkpoint at `path`; returns its size in GB."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from llmcxr_jax import checkpoint
    from llmcxr_jax.models.gpt_neox import GPTNeoX, get_preset

    cfg = get_preset("dolly-v2-3b", vocab_size=VOCAB, num_layers=layers)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: GPTNeoX(cfg, rngs=nnx.Rngs(0))))
    gen = np.random.default_rng(0)

    def normal(a: jax.ShapeDtypeStruct) -> jax.Array:
        x = gen.standard_normal(a.shape, np.float32)
        x *= np.float32(0.02)
        return jnp.asarray(x)

    checkpoint.save_model(path, nnx.merge(graphdef, jax.tree.map(normal, state)))
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e9


def child(way: str, path: str) -> None:
    t0 = time.perf_counter()
    if way == "int8":
        from llmcxr_jax.cpu_int8 import Int8GPTNeoX

        model = Int8GPTNeoX.from_checkpoint(path)
        resident = model.weight_bytes()
    else:
        import jax

        from llmcxr_jax import checkpoint

        dtype = {"fp32": "float32", "bf16": "bfloat16"}[way]
        model = checkpoint.load_model(path, param_dtype=dtype, dtype=dtype)
        resident = sum(x.nbytes for x in jax.tree.leaves(model))
    out = {"seconds": time.perf_counter() - t0, "model_gb": resident / 1e9}
    out["peak_rss_gb"] = peak_rss_gb()
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/llmcxr-3b", help="where the checkpoint is written")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint afterwards")
    ap.add_argument("--layers", type=int, default=32, help="32: dolly-v2-3b (fewer: a smoke test)")
    ap.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.dir)
        return

    from timing import recorded

    path = Path(args.dir)
    with recorded("load_3b"):
        if path.exists():
            shutil.rmtree(path)
        t0 = time.perf_counter()
        size = _in_child_write(path, args.layers)
        print(
            f"{args.layers} layers: checkpoint {size:.1f} GB written in "
            f"{time.perf_counter() - t0:.0f} s\n"
        )
        print("| load | seconds | model in memory GB | peak RSS GB | peak / checkpoint size |")
        print("|---|---:|---:|---:|---:|")
        for way in WAYS:
            p = subprocess.run(
                [sys.executable, __file__, "--child", way, "--dir", str(path)],
                capture_output=True,
                text=True,
            )
            line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
            if p.returncode or not line:
                print(f"| {way} | failed (exit {p.returncode}): {p.stderr.strip()[-300:]} | | | |")
                continue
            r = json.loads(line[-1][7:])
            print(
                f"| {way} | {r['seconds']:.0f} | {r['model_gb']:.1f} | {r['peak_rss_gb']:.1f} | "
                f"{r['peak_rss_gb'] / size:.2f} |"
            )
    if not args.keep:
        shutil.rmtree(path, ignore_errors=True)


def _in_child_write(path: Path, layers: int) -> float:
    """Write the checkpoint in a process of its own (its memory is returned when it ends)."""
    here = str(Path(__file__).parent)
    code = (
        f"import sys; sys.path.insert(0, {here!r}); import load_3b; "
        f"print('SIZE', load_3b.write(__import__('pathlib').Path({str(path)!r}), {layers}))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float([x for x in p.stdout.splitlines() if x.startswith("SIZE ")][-1].split()[1])


if __name__ == "__main__":
    main()
