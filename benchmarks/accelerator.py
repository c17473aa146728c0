"""The real-size LM train step (MFU) and KV-cache decoding on whatever JAX sees, against
transformers' PyTorch GPT-NeoX on the same device, in one command.

    PYTHONPATH=. python benchmarks/accelerator.py           # dolly-v2-3b; < 8 min on one H100
    PYTHONPATH=. python benchmarks/accelerator.py --tiny    # a tiny model, seconds on a CPU

- Train step, ours: the step `llmcxr-jax train` runs, built as it builds it
  (`lm_step.jit_train_step`: sharded by `sharding.py`'s rules, state donated) for dolly-v2-3b
  grown to LLM-CXR's 51,305 tokens, with configs/llmcxr_stage1.py's execution options (bf16
  compute, fp32 master weights, full remat, scanned layers), its AdamW and clipping, and its
  mesh (FSDP over every device). Rows are 2048-token packed rows; the global batch is the
  largest that fits: per-device rows go down a ladder from --batch-start, a batch XLA's memory
  analysis says cannot fit is skipped after compiling, and an out-of-memory error at run time
  (RESOURCE_EXHAUSTED) means the next one down.
  MFU = flops_per_token x tokens/s per device / peak bf16 FLOP/s of the device, where
  flops_per_token = 6 N + 12 L D T (llmcxr_jax/accelerators.py: N the matmul parameters, the
  attention square counted whole; remat's recomputation not counted).
- Decoding, ours: `llmcxr_jax.decode.generate`, greedy, bf16 weights, batch 1 and 16; ms per
  decoding step against the HBM floor: (bf16 weights read per step, all but the input
  embedding, + the mean KV cache) / the device's HBM bandwidth.
- PyTorch: `GPTNeoXForCausalLM` of the same shape, random weights. Train step = forward with
  labels, backward, clip_grad_norm_, AdamW (fused on CUDA) on fp32 master weights under bf16
  autocast, gradient checkpointing as our remat; its own largest batch (OutOfMemoryError:
  the next one down). Decoding = `generate(use_cache=True)` in bf16. Both eager, then with
  torch.compile (train: `torch.compile(model)` at eager's batch; decoding: a static cache, which
  transformers compiles itself) where CUDA is there and time is left.

Each part runs in its own subprocess, one after another (no memory shared between engines; a
crash or out-of-memory ends one part only), within --budget-s; a part that fails or runs out of
time is reported as such and the rest still run. The parent process starts no accelerator
backend (it imports jax only for the model's config). Everything printed to stdout, a Markdown
table and one JSON line, is appended to benchmarks/results/accelerator.md (`timing.recorded`;
--results DIR writes there instead). Progress goes to stderr.

Imports are only jax, flax, optax, numpy, torch and transformers (and tqdm, which transformers
needs): no ml_collections (a stand-in runs the stage-1 config file where it is missing), clu or
grain, so a bare GPU image runs it from the source tree.

A rerun can be shorter: `--batch-start N` (the batch the table says fits: one compile),
`--parts jax-train,torch-train`, `--torch-compile off`. `--profile DIR` adds a jax.profiler
trace of two more JAX train steps (docs/performance.md: what limits MFU).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# this tree's code (the record names this tree's commit) and timing.py beside this file
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import timing  # noqa: E402

from llmcxr_jax import accelerators  # noqa: E402

GIB = 1024**3
STAGE1_CONFIG = ROOT / "configs" / "llmcxr_stage1.py"
# per-device rows tried for the train step, largest first
BATCH_LADDER = (64, 48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1)
PROTOCOL = "@@ "  # a child's stdout lines carrying results start with this


# --------------------------------------------------------------------------------------------
# The stage-1 config and the model
# --------------------------------------------------------------------------------------------


class _AttrDict(dict):
    """The part of ml_collections.ConfigDict a config file and `optim` use: nested dicts with
    attribute access."""

    def __init__(self, d: dict | None = None, **kw: Any) -> None:
        super().__init__()
        for k, v in {**(d or {}), **kw}.items():
            self[k] = v

    def __setitem__(self, k: str, v: Any) -> None:
        if isinstance(v, dict) and not isinstance(v, _AttrDict):
            v = _AttrDict(v)
        super().__setitem__(k, v)

    def __getattr__(self, k: str) -> Any:
        try:
            return self[k]
        except KeyError:
            raise AttributeError(k) from None

    __setattr__ = __setitem__


def stage1_config() -> Any:
    """configs/llmcxr_stage1.py's `get_config()`: model overrides, optimizer, loss and mesh as
    `train` gets them. Where ml_collections is not installed (a bare GPU image) the file runs
    against a stand-in module: it only builds nested attribute dicts."""
    try:
        import ml_collections  # noqa: F401
    except ImportError:
        sys.modules["ml_collections"] = types.SimpleNamespace(ConfigDict=_AttrDict)
    spec = importlib.util.spec_from_file_location("llmcxr_stage1_config", STAGE1_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def model_config(tiny: bool, config: Any) -> Any:
    """dolly-v2-3b grown to LLM-CXR's vocabulary (or the tiny preset), with the stage-1
    execution options (bf16 compute, fp32 masters, remat, scanned layers)."""
    from llmcxr_jax.models.gpt_neox import get_preset

    overrides = dict(config.model_overrides)
    if tiny:
        return get_preset("tiny", **overrides)
    return get_preset(config.model, vocab_size=51305, vocab_pad_multiple=128, **overrides)


# --------------------------------------------------------------------------------------------
# Children: one part each, results as protocol lines on stdout
# --------------------------------------------------------------------------------------------


def emit(kind: str, **data: Any) -> None:
    print(PROTOCOL + json.dumps({"kind": kind, **data}), flush=True)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ladder(start: int) -> list[int]:
    return [b for b in BATCH_LADDER if b <= start] or [1]


def auto_start(tiny: bool, memory_bytes: int | None) -> int:
    """Per-device rows to try first: from the device's memory (dolly-v2-3b's fp32 state and
    Adam moments take 31 GiB; a 2048-token row about 3 GiB more)."""
    if tiny:
        return 2
    gib = (memory_bytes or 0) / GIB
    return 32 if gib >= 100 else 16 if gib >= 60 else 8


def _is_oom(e: BaseException) -> bool:
    text = str(e)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def _jax_info(spec: dict[str, Any]) -> bool:
    """Emit what JAX sees; False (said why) where the full size would run on a CPU: a JAX
    without its GPU or TPU plugin would spend the whole budget there."""
    import jax

    d = jax.devices()[0]
    emit("info", device_kind=d.device_kind, devices=jax.device_count(), platform=d.platform)
    if d.platform == "cpu" and not spec["tiny"]:
        emit("skip", why="JAX sees only a CPU (no CUDA or TPU plugin?); --tiny runs on CPUs")
        return False
    return True


def _memory_limit(device: Any) -> int | None:
    """Bytes the allocator may use on `device` (None on CPUs)."""
    try:
        stats = device.memory_stats()
    except Exception:  # backends without memory statistics
        return None
    return (stats or {}).get("bytes_limit")


def _peak_bytes(device: Any) -> int | None:
    try:
        stats = device.memory_stats()
    except Exception:
        return None
    return (stats or {}).get("peak_bytes_in_use")


def jax_train(spec: dict[str, Any]) -> None:
    """The stage-1 train step at the largest batch that fits; one row per measured batch."""
    import jax
    import numpy as np
    from flax import nnx

    from llmcxr_jax import sharding
    from llmcxr_jax.models.gpt_neox import GPTNeoX, GPTNeoXConfig
    from llmcxr_jax.train import lm_step, optim

    if not _jax_info(spec):
        return
    config = stage1_config()
    cfg = GPTNeoXConfig.from_dict(spec["model"])
    mesh = sharding.make_mesh(tuple(config.mesh))
    data_ways = mesh.shape["data"] * mesh.shape["fsdp"]
    tx = optim.optimizer(config.optim)
    loss_cfg = lm_step.LossConfig.from_config(config.loss)
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    batch_sh = sharding.logical_sharding(mesh, lm_step.BATCH_AXES)
    key = jax.device_put(jax.random.key(0), rep)
    T = spec["seq"]

    def build() -> tuple[Any, Any]:
        """Model, state and jitted step as `train` builds them (train/lm.py)."""
        with jax.set_mesh(mesh):
            model = GPTNeoX(cfg, rngs=nnx.Rngs(config.seed))
        graphdef, st = nnx.split(model)
        model = nnx.merge(graphdef, sharding.shard_state(st, mesh))
        graphdef, params = nnx.split(model, nnx.Param)
        state = lm_step.init_state(params, tx)
        state_sh = lm_step.state_shardings(state, mesh)
        state = jax.device_put(state, state_sh)
        return state, lm_step.jit_train_step(graphdef, tx, loss_cfg, state_sh, mesh)

    def batch_of(rows: int) -> dict[str, Any]:
        """Packed rows as the pipeline gives them (int32, one 2048-token segment per row)."""
        tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (rows, T), dtype=np.int32)
        mask = np.ones((rows, T), np.int32)
        mask[:, -1] = 0
        host = {
            "tokens": tokens,
            "targets": np.roll(tokens, -1, axis=1),
            "loss_mask": mask,
            "segment_ids": np.ones((rows, T), np.int32),
            "positions": np.broadcast_to(np.arange(T, dtype=np.int32), (rows, T)).copy(),
        }
        return {
            k: jax.make_array_from_callback(v.shape, batch_sh, lambda i, v=v: v[i])
            for k, v in host.items()
        }

    device = jax.devices()[0]
    limit = _memory_limit(device)
    start = spec["batch_start"] or auto_start(spec["tiny"], limit)
    state, step = None, None
    tried: list[str] = []
    for per_device in ladder(start):
        rows = per_device * data_ways
        batch = batch_of(rows)
        if state is None:
            state, step = build()
        say(f"jax-train: compiling for {rows} x {T} ...")
        t0 = time.perf_counter()
        try:
            with jax.set_mesh(mesh):
                compiled = step.lower(state, batch, key).compile()
        except Exception as e:
            if not _is_oom(e):
                raise
            tried.append(f"{rows}: out of memory compiling")
            continue
        compile_s = time.perf_counter() - t0
        mem = compiled.memory_analysis()
        need = None
        if mem is not None:
            need = (
                mem.argument_size_in_bytes
                + mem.temp_size_in_bytes
                + mem.output_size_in_bytes
                - mem.alias_size_in_bytes
            )
        if limit and need and need > limit:
            tried.append(f"{rows}: XLA plans {need / GIB:.1f} GiB > {limit / GIB:.1f}")
            say(f"jax-train: {tried[-1]}")
            continue
        try:
            with jax.set_mesh(mesh):
                t0 = time.perf_counter()
                state, m = compiled(state, batch, key)
                loss = float(m["loss"])
                first_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                for _ in range(spec["steps"]):
                    state, m = compiled(state, batch, key)
                jax.block_until_ready((state, m))
                step_s = (time.perf_counter() - t0) / spec["steps"]
        except Exception as e:
            if not _is_oom(e):
                raise
            tried.append(f"{rows}: out of memory running")
            say(f"jax-train: {tried[-1]}")
            state = step = compiled = None  # the donated state may be gone: build it again
            gc.collect()
            continue
        tried.append(f"{rows}: fits")
        if spec.get("profile"):  # after the timing, which it would slow down
            try:
                from jax import profiler

                with profiler.trace(spec["profile"]), jax.set_mesh(mesh):
                    for _ in range(2):
                        state, m = compiled(state, batch, key)
                    jax.block_until_ready((state, m))
                say(f"jax-train: profile of 2 steps in {spec['profile']}")
            except Exception as e:  # the profiler's own dependencies may be missing
                say(f"jax-train: no profile: {type(e).__name__}: {e}")
        emit(
            "train",
            batch=rows,
            seq=T,
            step_s=step_s,
            first_step_s=first_s,
            compile_s=compile_s,
            loss=loss,
            planned_gib=need / GIB if need else None,
            peak_gib=(_peak_bytes(device) or 0) / GIB or None,
            tried=tried,
        )
        return
    raise SystemExit(f"jax-train: no batch fits ({'; '.join(tried)})")


def jax_decode(spec: dict[str, Any]) -> None:
    """`decode.generate` with bf16 weights, one row per batch size."""
    import jax
    import numpy as np
    from flax import nnx

    from llmcxr_jax.decode import generate
    from llmcxr_jax.models.gpt_neox import GPTNeoX, GPTNeoXConfig

    if not _jax_info(spec):
        return
    cfg = GPTNeoXConfig.from_dict(spec["model"]).replace(
        dtype="bfloat16", param_dtype="bfloat16", remat_policy="none"
    )
    model = GPTNeoX(cfg, rngs=nnx.Rngs(0))
    P, N = spec["prompt"], spec["new_tokens"]
    for b in spec["decode_batches"]:
        prompts = np.random.default_rng(b).integers(1, cfg.vocab_size, (b, P)).astype(np.int32)

        def run(prompts: Any = prompts) -> Any:
            return jax.block_until_ready(generate(model, prompts, max_new_tokens=N).tokens)

        say(f"jax-decode: batch {b}, compiling ...")
        first = timing.seconds(run, 1, warmup=False)[0]
        sec = statistics.median(timing.seconds(run, spec["reps"], warmup=False))
        emit(
            "decode",
            batch=b,
            step_ms=sec / N * 1e3,
            tokens_per_s=b * N / sec,
            compile_s=max(first - sec, 0.0),
        )


def _torch_setup(spec: dict[str, Any]) -> tuple[Any, Any, str] | None:
    """torch, transformers and the device, or None (said why) where PyTorch cannot run."""
    try:
        import torch
        import transformers
    except ImportError as e:  # a TPU VM: the package's install has no torch
        emit("skip", why=f"not installed: {e.name}")
        return None

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name(0) if dev == "cuda" else timing.cpu_model()
    emit(
        "info",
        device_kind=name,
        devices=1,
        platform=dev,
        torch_cuda=torch.version.cuda,
        torch=torch.__version__,
        transformers=transformers.__version__,
    )
    if dev == "cpu" and not spec["tiny"]:
        emit("skip", why="no CUDA device (PyTorch at this size runs on a GPU only)")
        return None
    return torch, transformers, dev


def _hf_model(transformers: Any, torch: Any, spec: dict[str, Any], dev: str) -> Any:
    hf_cfg = transformers.GPTNeoXConfig.from_dict(spec["hf_config"])
    torch.manual_seed(0)
    with torch.device(dev):
        return transformers.GPTNeoXForCausalLM(hf_cfg)


def torch_train(spec: dict[str, Any]) -> None:
    """forward + backward + clip + AdamW under bf16 autocast at the largest batch that fits."""
    setup = _torch_setup(spec)
    if setup is None:
        return
    torch, transformers, dev = setup
    compiled = spec.get("torch_compile", False)
    hf = _hf_model(transformers, torch, spec, dev).float().train()
    hf.config.use_cache = False
    if spec["remat"]:  # every layer recomputed in the backward pass, as our full remat
        ckpt = {"use_reentrant": False}
        if hasattr(hf, "activation_checkpointing_enable"):  # newer transformers' name
            hf.activation_checkpointing_enable(activation_checkpointing_kwargs=ckpt)
        else:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt)
    model = torch.compile(hf) if compiled else hf
    o = spec["optim"]
    opt = torch.optim.AdamW(
        hf.parameters(),
        lr=o["lr"],
        betas=(o["b1"], o["b2"]),
        eps=o["eps"],
        weight_decay=o["weight_decay"],
        fused=dev == "cuda",
    )
    oom_error = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    T = spec["seq"]

    def step(ids: Any) -> Any:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=dev, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        if o["clip"]:
            torch.nn.utils.clip_grad_norm_(hf.parameters(), o["clip"])
        opt.step()
        return loss.detach()

    memory = torch.cuda.get_device_properties(0).total_memory if dev == "cuda" else None
    start = spec.get("batch") or spec["batch_start"] or auto_start(spec["tiny"], memory)
    tried: list[str] = []
    for rows in ladder(start):
        ids = torch.randint(0, hf.config.vocab_size, (rows, T), device=dev)
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        say(f"{'torch.compile' if compiled else 'torch'}-train: {rows} x {T} ...")
        fitted = False
        try:
            t0 = time.perf_counter()
            loss = float(step(ids))
            first_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(spec["steps"]):
                step(ids)
            sync()
            step_s = (time.perf_counter() - t0) / spec["steps"]
            fitted = True
        except oom_error:
            tried.append(f"{rows}: out of memory")
        if not fitted:  # outside the except: its traceback no longer holds the tensors
            opt.zero_grad(set_to_none=True)
            gc.collect()
            torch.cuda.empty_cache()
            continue
        tried.append(f"{rows}: fits")
        peak = torch.cuda.max_memory_allocated() / GIB if dev == "cuda" else None
        emit(
            "train",
            batch=rows,
            seq=T,
            step_s=step_s,
            first_step_s=first_s,
            compile_s=max(first_s - step_s, 0.0),
            loss=loss,
            peak_gib=peak,
            tried=tried,
        )
        return
    raise SystemExit(f"torch-train: no batch fits ({'; '.join(tried)})")


def torch_decode(spec: dict[str, Any]) -> None:
    """`generate(use_cache=True)` in bf16, greedy, one row per batch size."""
    setup = _torch_setup(spec)
    if setup is None:
        return
    torch, transformers, dev = setup
    hf = _hf_model(transformers, torch, spec, dev).to(torch.bfloat16).eval()
    hf.generation_config.eos_token_id = None  # exactly new_tokens, as ours
    hf.generation_config.pad_token_id = 0
    P, N = spec["prompt"], spec["new_tokens"]
    extra = {"cache_implementation": "static"} if spec.get("torch_compile") else {}
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    for b in spec["decode_batches"]:
        gen = torch.Generator().manual_seed(b)
        prompts = torch.randint(1, hf.config.vocab_size, (b, P), generator=gen).to(dev)

        def run(prompts: Any = prompts) -> Any:
            with torch.inference_mode():
                out = hf.generate(
                    prompts,
                    attention_mask=torch.ones_like(prompts),
                    do_sample=False,
                    max_new_tokens=N,
                    min_new_tokens=N,
                    use_cache=True,
                    **extra,
                )
            sync()
            return out

        say(f"torch-decode: batch {b} ...")
        first = timing.seconds(run, 1, warmup=False)[0]
        sec = statistics.median(timing.seconds(run, spec["reps"], warmup=False))
        emit(
            "decode",
            batch=b,
            step_ms=sec / N * 1e3,
            tokens_per_s=b * N / sec,
            compile_s=max(first - sec, 0.0),
        )


PartFn = Callable[[dict[str, Any]], None]
# name -> (function, engine, what, seconds it is given at least (and kept for it while earlier
# parts run), optional)
PARTS: dict[str, tuple[PartFn, str, str, float, bool]] = {
    "jax-train": (jax_train, "JAX (ours)", "train", 150.0, False),
    "jax-decode": (jax_decode, "JAX (ours)", "decode", 80.0, False),
    "torch-train": (torch_train, "PyTorch eager", "train", 70.0, False),
    "torch-decode": (torch_decode, "PyTorch eager", "decode", 50.0, False),
    "torch-compile-train": (torch_train, "PyTorch torch.compile", "train", 0.0, True),
    "torch-compile-decode": (torch_decode, "PyTorch torch.compile", "decode", 0.0, True),
}


def run_part(name: str, spec: dict[str, Any]) -> None:
    if name.startswith("torch-compile"):
        spec = {**spec, "torch_compile": True}
    PARTS[name][0](spec)


# --------------------------------------------------------------------------------------------
# The parent: children in turn, then the report
# --------------------------------------------------------------------------------------------


def run_child(name: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one part in a fresh process; its protocol lines, and how it ended."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    # JAX takes 75% of a GPU by default; nothing else runs beside it here
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.94")
    # PyTorch: retrying a smaller batch after an out-of-memory error needs unfragmented memory
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--part",
        name,
        "--spec",
        json.dumps(spec),
    ]
    tail: collections.deque[str] = collections.deque(maxlen=20)
    t0 = time.monotonic()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
        )

        def relay() -> None:
            for line in proc.stderr:
                tail.append(line.rstrip())
                sys.stderr.write(f"[{name}] {line}")
                sys.stderr.flush()

        reader = threading.Thread(target=relay, daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=timeout)
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the child's own process group
            proc.wait()
            status = f"timed out after {timeout:.0f} s"
        reader.join(timeout=5)
        out.seek(0)
        lines = [json.loads(s[len(PROTOCOL) :]) for s in out if s.startswith(PROTOCOL)]
    why = next((t for t in reversed(tail) if t.strip()), "") if status.startswith("failed") else ""
    res = {"part": name, "status": status, "seconds": time.monotonic() - t0, "why": why}
    res["info"] = next((x for x in lines if x["kind"] == "info"), {})
    res["rows"] = [x for x in lines if x["kind"] in ("train", "decode")]
    skip = next((x for x in lines if x["kind"] == "skip"), None)
    if skip:
        res["status"], res["why"] = "skipped", skip["why"]
    return res


def nvidia_smi() -> str:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return "no nvidia-smi"
    try:
        r = subprocess.run(
            [exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"nvidia-smi failed: {e}"
    return r.stdout.strip().replace("\n", "; ") or r.stderr.strip()


def versions() -> dict[str, str]:
    """Installed versions, read from package metadata (nothing is imported)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in (
        "jax",
        "jaxlib",
        "jax-cuda12-plugin",
        "jax-cuda13-plugin",
        "libtpu",
        "flax",
        "optax",
        "numpy",
        "torch",
        "transformers",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def _f(x: float | None, fmt: str) -> str:
    """`x` formatted, or n/a; a format ending in % appends a percent sign."""
    if x is None:
        return "n/a"
    return format(x, fmt[:-1]) + "%" if fmt.endswith("%") and fmt != "%" else format(x, fmt)


def decode_floor_s(
    cfg: Any, batch: int, prompt: int, new_tokens: int, bw: float | None
) -> float | None:
    """Seconds one decoding step must take at `bw` bytes/s: the bf16 weights it reads (all but
    the input embedding) plus the mean KV cache (prompt and the tokens before it)."""
    if not bw:
        return None
    weights = (cfg.num_params(padded=True) - cfg.padded_vocab_size * cfg.hidden_size) * 2
    mean_len = prompt + (new_tokens - 1) / 2
    cache = 2 * cfg.num_layers * batch * mean_len * cfg.hidden_size * 2
    return (weights + cache) / bw


def report(args: argparse.Namespace) -> int:
    """Run the parts in turn; print the tables and the JSON line. Returns the exit status."""
    from llmcxr_jax.convert.hf_gpt_neox import config_to_hf

    config = stage1_config()
    cfg = model_config(args.tiny, config)
    spec = {
        "tiny": args.tiny,
        "model": cfg.to_dict(),
        "hf_config": config_to_hf(cfg),
        "seq": args.seq,
        "steps": args.steps,
        "batch_start": args.batch_start,
        "decode_batches": args.decode_batch,
        "prompt": args.prompt,
        "new_tokens": args.new_tokens,
        "reps": args.reps,
        "profile": str(args.profile.resolve()) if args.profile else None,
        "remat": cfg.remat_policy != "none",
        "optim": {k: config.optim[k] for k in ("lr", "b1", "b2", "eps", "weight_decay", "clip")},
    }
    names = [n for n in PARTS if n in args.parts]
    if args.torch_compile == "off":
        names = [n for n in names if not n.startswith("torch-compile")]
    say(f"accelerator: parts {', '.join(names)}; budget {args.budget_s:.0f} s")
    t_start = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names):
        optional = PARTS[name][4]
        left = args.budget_s - (time.monotonic() - t_start)
        kept = sum(PARTS[n][3] * args.reserve_scale for n in names[i + 1 :] if not PARTS[n][4])
        timeout = min(left, max(left - kept, PARTS[name][3] * args.reserve_scale))
        if name.startswith("torch-compile") and args.torch_compile == "auto":
            seen = [r.get("info", {}).get("platform") for r in results.values()]
            cuda = "cuda" in seen or ("cpu" not in seen and shutil.which("nvidia-smi"))
            if not cuda:
                results[name] = {"status": "skipped", "why": "--torch-compile auto: no CUDA"}
                continue
        if timeout < (args.min_part_s if optional else 5.0):
            results[name] = {
                "status": "skipped",
                "why": f"time budget spent ({max(left, 0):.0f} s left)",
            }
            continue
        part_spec = dict(spec)
        if name == "torch-compile-train":  # eager's batch: one compile, not a search
            rows = results.get("torch-train", {}).get("rows") or [{}]
            part_spec["batch"] = rows[0].get("batch")
        say(f"accelerator: {name} (up to {timeout:.0f} s)")
        results[name] = run_child(name, part_spec, timeout)
        say(f"accelerator: {name}: {results[name]['status']} in {results[name]['seconds']:.0f} s")

    # ---- the report: device, versions, model, tables, JSON ----------------------------------
    infos = [r.get("info") or {} for r in results.values()]  # JAX's first
    info = next((i for i in infos if i.get("platform") not in (None, "cpu")), None)
    info = info or next((i for i in infos if i), {})
    kind = info.get("device_kind", "unknown")
    n_dev = int(info.get("devices", 1))
    acc = accelerators.lookup(kind)
    peak = acc.peak_bf16_flops if acc else None
    bw = acc.hbm_bytes_per_s if acc else None
    fpt = accelerators.flops_per_token(cfg, args.seq)
    ver = versions()
    torch_info = next((i for i in infos if "torch" in i), {})
    if torch_info.get("torch_cuda"):
        ver["torch_cuda"] = torch_info["torch_cuda"]
    driver = nvidia_smi()

    print(
        f"device: {kind} x {n_dev} ({acc.name if acc else 'not in the table'}: peak bf16 "
        f"{_f(peak and peak / 1e12, '.0f')} TFLOP/s, HBM {_f(bw and bw / 1e12, '.2f')} TB/s); "
        f"driver: {driver}"
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in ver.items()))
    what = "tiny preset" if args.tiny else f"{config.model} grown to 51,305 tokens"
    print(
        f"model: {what}: {cfg.num_layers} layers, hidden {cfg.hidden_size}, {cfg.num_heads} "
        f"heads, MLP {cfg.intermediate_size}, vocab {cfg.vocab_size:,} (padded "
        f"{cfg.padded_vocab_size:,}), {cfg.num_params():,} parameters"
    )
    print(
        f"train: stage-1 options (compute {cfg.dtype}, masters {cfg.param_dtype}, remat "
        f"{cfg.remat_policy}, scan_layers {cfg.scan_layers}, mesh {tuple(config.mesh)}), rows of "
        f"{args.seq} tokens, mean of {args.steps} steps after one; FLOPs/token = 6 N + 12 L D T "
        f"= {fpt / 1e9:.3g} GFLOP"
    )
    print(
        f"decode: greedy, {args.prompt}-token prompt, {args.new_tokens} new tokens, bf16 weights, "
        f"median of {args.reps}; floor = (bf16 weights but the input embedding + mean KV cache) "
        "/ HBM bandwidth\n"
    )

    train_rows: list[dict[str, Any]] = []
    decode_rows: list[dict[str, Any]] = []
    for name in names:
        _, engine, what, _, _ = PARTS[name]
        r = results[name]
        rows = []
        for x in r.get("rows") or []:  # what was measured, even by a part that did not finish
            row = {"engine": engine, "status": "ok", "batch": x["batch"]}
            if what == "train":
                tok_s = x["batch"] * x["seq"] / x["step_s"]
                per_dev = tok_s / (n_dev if name.startswith("jax") else 1)
                row.update(
                    seq=x["seq"],
                    step_s=x["step_s"],
                    tokens_per_s=tok_s,
                    tokens_per_s_per_device=per_dev,
                    mfu=per_dev * fpt / peak if peak else None,
                    loss=x["loss"],
                    compile_s=x["compile_s"],
                    peak_gib=x.get("peak_gib"),
                    tried=x["tried"],
                )
            else:
                floor = decode_floor_s(cfg, x["batch"], args.prompt, args.new_tokens, bw)
                row.update(
                    ms_per_token=x["step_ms"],
                    tokens_per_s=x["tokens_per_s"],
                    floor_ms_per_token=floor * 1e3 if floor else None,
                    x_floor=x["step_ms"] / (floor * 1e3) if floor else None,
                    compile_s=x["compile_s"],
                )
            rows.append(row)
        if r["status"] != "ok" or not rows:  # what did not run, or did not finish
            why = f": {r['why']}" if r.get("why") else ""
            rows.append({"engine": engine, "status": r["status"] + why})
        (train_rows if what == "train" else decode_rows).extend(rows)

    print("### Train step (forward, backward, clip, AdamW)\n")
    print(
        "| engine | global batch (rows x tokens) | s/step | tokens/s | tokens/s/device | MFU | "
        "peak GiB | compile s | batches tried | status |"
    )
    print("|---" * 10 + "|")
    for row in train_rows:
        if "batch" not in row:
            print(f"| {row['engine']} | - | - | - | - | - | - | - | - | {row['status']} |")
            continue
        print(
            f"| {row['engine']} | {row['batch']} x {row['seq']} | {row['step_s']:.3f} | "
            f"{row['tokens_per_s']:,.0f} | {row['tokens_per_s_per_device']:,.0f} | "
            f"{_f(row['mfu'] and 100 * row['mfu'], '.1f%')} | "
            f"{_f(row['peak_gib'], '.1f')} | {row['compile_s']:.0f} | "
            f"{'; '.join(row['tried'])} | {row['status']} |"
        )
    print("\n### Decoding (ms per step of the whole batch)\n")
    print(
        "| engine | batch | ms/token | tokens/s | floor ms/token | x floor | compile s | status |"
    )
    print("|---" * 8 + "|")
    for row in decode_rows:
        if "batch" not in row:
            print(f"| {row['engine']} | - | - | - | - | - | - | {row['status']} |")
            continue
        print(
            f"| {row['engine']} | {row['batch']} | {row['ms_per_token']:.2f} | "
            f"{row['tokens_per_s']:,.0f} | {_f(row['floor_ms_per_token'], '.2f')} | "
            f"{_f(row['x_floor'], '.2f')} | {row['compile_s']:.0f} | {row['status']} |"
        )
    print("\n### Peaks the MFU and the floor are taken against (llmcxr_jax/accelerators.py)\n")
    print(accelerators.markdown_table() + "\n")
    summary = {
        "benchmark": "accelerator",
        "commit": timing.commit(),
        "tiny": args.tiny,
        "device_kind": kind,
        "devices": n_dev,
        "accelerator": acc.name if acc else None,
        "peak_bf16_flops": peak,
        "hbm_bytes_per_s": bw,
        "driver": driver,
        "versions": ver,
        "model": {
            "layers": cfg.num_layers,
            "hidden": cfg.hidden_size,
            "vocab": cfg.vocab_size,
            "params": cfg.num_params(),
        },
        "seq": args.seq,
        "flops_per_token": fpt,
        "train": train_rows,
        "decode": decode_rows,
        "wall_s": time.monotonic() - t_start,
    }
    print(json.dumps(summary, sort_keys=True))
    ours_ok = all(
        results[n]["status"] == "ok" for n in names if n.startswith("jax") and n in results
    )
    return 0 if ours_ok else 1


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny preset, 2 x 64 tokens: a CPU check")
    ap.add_argument(
        "--results", type=Path, default=None, help="record here, not benchmarks/results"
    )
    ap.add_argument(
        "--budget-s", type=float, default=None, help="whole run (default 450; tiny 240)"
    )
    ap.add_argument(
        "--batch-start",
        type=int,
        default=0,
        help="per-device rows tried first (0: 2 tiny; 32/16/8 by device memory)",
    )
    ap.add_argument("--seq", type=int, default=None, help="tokens per row (default 2048; tiny 64)")
    ap.add_argument("--steps", type=int, default=None, help="timed train steps (5; tiny 2)")
    ap.add_argument("--decode-batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--prompt", type=int, default=None, help="prompt tokens (64; tiny 8)")
    ap.add_argument("--new-tokens", type=int, default=None, help="(128; tiny 8)")
    ap.add_argument("--reps", type=int, default=None, help="decoding repetitions (3; tiny 1)")
    ap.add_argument(
        "--torch-compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="the torch.compile parts: auto = where CUDA is",
    )
    ap.add_argument(
        "--parts",
        default=",".join(PARTS),
        type=lambda s: [p for p in s.split(",") if p],
        help=f"comma-separated subset of {', '.join(PARTS)}",
    )
    ap.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="write a jax.profiler trace of 2 more JAX train steps here (TensorBoard/xprof)",
    )
    ap.add_argument("--part", choices=tuple(PARTS), help=argparse.SUPPRESS)  # a child
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        ap.error(f"unknown parts {sorted(unknown)}")
    tiny = args.tiny
    for k, full, small in (
        ("budget_s", 450.0, 240.0),
        ("seq", 2048, 64),
        ("steps", 5, 2),
        ("prompt", 64, 8),
        ("new_tokens", 128, 8),
        ("reps", 3, 1),
    ):
        if getattr(args, k) is None:
            setattr(args, k, small if tiny else full)
    args.reserve_scale = 0.25 if tiny else 1.0  # seconds kept for later parts
    args.min_part_s = 20.0 if tiny else 60.0  # an optional part needs at least this
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.part:
        run_part(args.part, json.loads(args.spec))
        return 0
    with timing.recorded(
        "accelerator", argv=sys.argv[1:] if argv is None else argv, results=args.results
    ):
        return report(args)


if __name__ == "__main__":
    sys.exit(main())
