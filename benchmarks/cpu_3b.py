"""Real-size inference on a CPU: dolly-v2-3b's shapes with LLM-CXR's 51,305-row vocabulary.

Random weights (the real ones cannot be downloaded here; speed does not depend on their values),
fp32 unless named, on this machine's cores. Two tasks, one sample each:

- (a) CXR-to-report: a 300-token prompt (an image's 256 codes and the template), then a report
  of exactly 128 tokens, nucleus sampling (top-p 0.92) over the whole vocabulary;
- (b) report-to-CXR: a 64-token report prompt, then a film. Ours samples exactly 256 codes (only
  the 1,024 image-code logits are computed) and decodes them with the VQ-GAN at 256x256.
  PyTorch uses LLM-CXR's settings: top-p 0.92 over the whole vocabulary, 300 new tokens, ONE
  attempt (the original resamples until 256 codes come out: a lower bound on its cost).

Each engine runs in its own process (they never share memory): ours in JAX fp32 (first call,
which compiles, and a second, steady call); ours with int8 weights (`llmcxr_jax.cpu_int8`:
the same decoding on PyTorch's fbgemm kernels, built tensor by tensor so the fp32 model is never
whole in memory, image-constrained for (b), the VQ-GAN decode in JAX); then transformers'
`GPTNeoXForCausalLM.generate` in fp32, bf16 and with PyTorch's dynamic int8 (`quantize_dynamic`
on the Linear layers of the fp32 model). Reported: seconds per sample, tokens/s, the prompt's
prefill (a one-token generation), the ms per decoded token after it against the
memory-bandwidth floor (the weight bytes that token reads at the engine's precision, over the
bandwidth measured here by a large read), and each process's peak resident memory.

    python benchmarks/cpu_3b.py [--engines jax int8 torch-fp32 torch-bf16 torch-int8] [--tasks a b]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TEXT_VOCAB = 50281  # GPT-NeoX BPE + dolly's and LLM-CXR's special tokens
VOCAB = TEXT_VOCAB + 1024  # + 1,024 image codes
IMAGE_LO, IMAGE_HI = TEXT_VOCAB, VOCAB
END_ID = 50277  # dolly's `### End`
TOP_P = 0.92
REPORT_PROMPT, REPORT_NEW = 300, 128
FILM_PROMPT, FILM_CODES, LLMCXR_MAX_NEW = 64, 256, 300
ENGINES = ("jax", "int8", "torch-fp32", "torch-bf16", "torch-int8")
SHORT_NEW = 32  # new tokens a task for the engines named by --short
BYTES_PER_WEIGHT = {"int8": 1, "torch-int8": 1, "torch-bf16": 2}  # fp32 otherwise


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def bandwidth_gbs() -> float:
    """Read bandwidth of this machine with every core reading (XLA and PyTorch decode on all of
    them; one numpy thread reads ~40% less): the median of 5 threaded sums over a 2 GiB array (the
    best of them swings up to 1.7x between runs on a shared 2-core VM; the median much less)."""
    import threading

    x = np.ones(2**28, np.float64)  # 2 GiB
    parts = np.array_split(x, os.cpu_count() or 1)

    def read_all() -> None:
        threads = [threading.Thread(target=part.sum) for part in parts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    median = float(np.median([_timed(read_all) for _ in range(5)]))
    return x.nbytes / median / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _prompts(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    report = rng.integers(1, END_ID, (1, REPORT_PROMPT))
    report[0, -256 - 20 : -20] = rng.integers(IMAGE_LO, IMAGE_HI, 256)  # the image's codes
    film = rng.integers(1, END_ID, (1, FILM_PROMPT))
    return report, film


def xla_matvec_gbs(d: int = 2560, copies: int = 4) -> float:
    """GB/s of one decoding layer's four fp32 products in XLA alone (QKV, attention out, MLP in
    and out, through the model's own `_project` on [out, in] kernels), rotating `copies` layers
    so none stays in cache: the ceiling an fp32 decode step in XLA can reach on this machine,
    to set beside the raw read bandwidth."""
    import jax
    import jax.numpy as jnp

    from llmcxr_jax.models.gpt_neox import _project

    gen = np.random.default_rng(0)
    shapes = [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d)]
    layers = [
        [jnp.asarray(gen.standard_normal(s, np.float32)) for s in shapes] for _ in range(copies)
    ]
    step = jax.jit(lambda ws, x, xf: [_project(x if w.shape[1] == d else xf, w) for w in ws])
    x, xf = jnp.ones((1, d), jnp.float32), jnp.ones((1, 4 * d), jnp.float32)
    jax.block_until_ready(step(layers[0], x, xf))
    reps = 10
    t0 = time.perf_counter()
    for _ in range(reps):
        for ws in layers:
            y = step(ws, x, xf)
    jax.block_until_ready(y)
    nbytes = sum(a * b for a, b in shapes) * 4
    return reps * copies * nbytes / (time.perf_counter() - t0) / 1e9


def run_jax(tasks: list[str], seed: int, layers: int) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from llmcxr_jax.decode import Sampler, generate
    from llmcxr_jax.models.gpt_neox import GPTNeoX, get_preset

    matvec_gbs = xla_matvec_gbs()
    t0 = time.perf_counter()
    cfg = get_preset("dolly-v2-3b", vocab_size=VOCAB, num_layers=layers)
    # shapes only, then N(0, 0.02) from numpy: JAX's threefry init of 2.8 B values takes minutes
    graphdef, state = nnx.split(nnx.eval_shape(lambda: GPTNeoX(cfg, rngs=nnx.Rngs(seed))))
    gen = np.random.default_rng(seed)

    def normal(a: jax.ShapeDtypeStruct) -> jax.Array:
        x = gen.standard_normal(a.shape, np.float32)
        x *= np.float32(0.02)  # in place: one host copy of a leaf at a time (3.4 GB at most)
        return jnp.asarray(x)

    state = jax.tree.map(normal, state)
    model = nnx.merge(graphdef, state)
    out = {"params": model.config.num_params(), "build_s": time.perf_counter() - t0}
    out["xla_matvec_gbs"] = matvec_gbs
    report, film = _prompts(seed)
    sampler = Sampler(top_p=TOP_P)
    vq, decode = _vqgan(seed)
    from llmcxr_jax.decode import prefill

    for task in tasks:
        prompt = report if task == "a" else film
        cache = prompt.shape[1] + (REPORT_NEW if task == "a" else FILM_CODES)
        for _ in range(2):  # the first call compiles
            t0 = time.perf_counter()
            jax.block_until_ready(prefill(model, prompt, cache_len=cache)[0])
            out[f"{task}_prefill_s"] = time.perf_counter() - t0
        for call in ("first", "steady"):
            t0 = time.perf_counter()
            if task == "a":
                res = generate(model, report, max_new_tokens=REPORT_NEW, sampler=sampler, rng=seed)
                jax.block_until_ready(res.tokens)
                new = REPORT_NEW
            else:
                res = generate(
                    model,
                    film,
                    max_new_tokens=FILM_CODES,
                    sampler=sampler,
                    vocab_range=(IMAGE_LO, IMAGE_HI),
                    rng=seed,
                )
                codes = np.asarray(res.tokens) - IMAGE_LO
                assert codes.shape == (1, FILM_CODES) and codes.min() >= 0
                t1 = time.perf_counter()
                pixels = jax.block_until_ready(decode(vq, codes))
                out[f"b_{call}_vq_decode_s"] = time.perf_counter() - t1
                assert pixels.shape[1:3] == (256, 256)
                new = FILM_CODES
            out[f"{task}_{call}_s"] = time.perf_counter() - t0
            out[f"{task}_new_tokens"] = new
    out["peak_rss_gb"] = peak_rss_gb()
    return out


def _vqgan(seed: int):
    """The VQ-GAN (random weights, llmcxr-f16: 16x16 codes -> 256x256) and its jitted decode."""
    from flax import nnx

    from llmcxr_jax.models.vqgan import VQGAN, get_preset

    vq = VQGAN(get_preset("llmcxr-f16"), rngs=nnx.Rngs(seed))
    return vq, nnx.jit(lambda m, c: m.decode(c))


def _random_hf_tensors(cfg, seed: int):
    """(HF key, N(0, 0.02) fp32 array) for every weight of `cfg`, one at a time."""
    rng = np.random.default_rng(seed)
    D, F, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size

    def w(*shape):
        x = rng.standard_normal(shape, np.float32)
        x *= np.float32(0.02)
        return x

    yield "gpt_neox.embed_in.weight", w(V, D)
    for i in range(cfg.num_layers):
        L = f"gpt_neox.layers.{i}."
        for ln in ("input_layernorm", "post_attention_layernorm"):
            yield L + ln + ".weight", np.ones(D, np.float32)
            yield L + ln + ".bias", np.zeros(D, np.float32)
        for name, (o, n) in {
            "attention.query_key_value": (3 * D, D),
            "attention.dense": (D, D),
            "mlp.dense_h_to_4h": (F, D),
            "mlp.dense_4h_to_h": (D, F),
        }.items():
            yield L + name + ".weight", w(o, n)
            yield L + name + ".bias", np.zeros(o, np.float32)
    yield "gpt_neox.final_layer_norm.weight", np.ones(D, np.float32)
    yield "gpt_neox.final_layer_norm.bias", np.zeros(D, np.float32)
    yield "embed_out.weight", w(V, D)


def run_int8(tasks: list[str], seed: int, layers: int) -> dict:
    import jax

    from llmcxr_jax.cpu_int8 import Int8GPTNeoX
    from llmcxr_jax.decode import Sampler
    from llmcxr_jax.models.gpt_neox import get_preset

    t0 = time.perf_counter()
    cfg = get_preset("dolly-v2-3b", vocab_size=VOCAB, num_layers=layers)
    model = Int8GPTNeoX.from_tensors(cfg, _random_hf_tensors(cfg, seed))
    out = {"params": cfg.num_params(), "build_s": time.perf_counter() - t0}
    out["build_peak_rss_gb"] = peak_rss_gb()
    report, film = _prompts(seed)
    sampler = Sampler(top_p=TOP_P)
    vq, decode = _vqgan(seed)
    jax.block_until_ready(decode(vq, np.zeros((1, FILM_CODES), np.int32)))  # compile it once
    for task in tasks:
        t0 = time.perf_counter()
        model.generate(report if task == "a" else film, max_new_tokens=1, sampler=sampler)
        out[f"{task}_prefill_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if task == "a":
            res = model.generate(report, max_new_tokens=REPORT_NEW, sampler=sampler, rng=seed)
            new = int(res.lengths[0])
        else:
            res = model.generate(
                film,
                max_new_tokens=FILM_CODES,
                sampler=sampler,
                vocab_range=(IMAGE_LO, IMAGE_HI),
                rng=seed,
            )
            codes = res.tokens - IMAGE_LO
            assert codes.shape == (1, FILM_CODES) and codes.min() >= 0
            t1 = time.perf_counter()
            pixels = jax.block_until_ready(decode(vq, codes))
            out["b_steady_vq_decode_s"] = time.perf_counter() - t1
            assert pixels.shape[1:3] == (256, 256)
            new = FILM_CODES
        out[f"{task}_steady_s"] = time.perf_counter() - t0
        out[f"{task}_new_tokens"] = new
    out["peak_rss_gb"] = peak_rss_gb()
    return out


def run_torch(dtype: str, tasks: list[str], seed: int, layers: int, short: bool) -> dict:
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=2560,
        num_hidden_layers=layers,
        num_attention_heads=32,
        intermediate_size=10240,
        rotary_pct=0.25,
        max_position_embeddings=2048,
        use_parallel_residual=True,
        bos_token_id=0,
        eos_token_id=END_ID,
    )
    t0 = time.perf_counter()
    model = transformers.GPTNeoXForCausalLM(cfg).eval()
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    elif dtype == "int8":
        # in place: a copy of the 11 GB fp32 model does not fit beside it in 23 GB
        model = torch.ao.quantization.quantize_dynamic(
            model, {torch.nn.Linear}, torch.qint8, inplace=True
        )
    out = {"build_s": time.perf_counter() - t0, "threads": torch.get_num_threads()}
    report, film = _prompts(seed)
    for task in tasks:
        x = torch.tensor(report if task == "a" else film)
        kw = dict(do_sample=True, top_p=TOP_P, top_k=0, pad_token_id=0)
        if task == "a":
            n = SHORT_NEW if short else REPORT_NEW
            kw.update(max_new_tokens=n, min_new_tokens=n, eos_token_id=None)
        else:  # LLM-CXR's settings, one attempt
            n = SHORT_NEW if short else LLMCXR_MAX_NEW
            kw.update(max_new_tokens=n, eos_token_id=END_ID)
        one = dict(kw, max_new_tokens=1, min_new_tokens=None)
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(x, attention_mask=torch.ones_like(x), **one)
        out[f"{task}_prefill_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with torch.no_grad():
            y = model.generate(x, attention_mask=torch.ones_like(x), **kw)
        out[f"{task}_steady_s"] = time.perf_counter() - t0
        new = y[0, x.shape[1] :].numpy()
        out[f"{task}_new_tokens"] = int(len(new))
        if task == "b":
            out["b_image_codes"] = int(((new >= IMAGE_LO) & (new < IMAGE_HI)).sum())
    out["peak_rss_gb"] = peak_rss_gb()
    return out


def child(engine: str, tasks: list[str], seed: int, layers: int, short: bool) -> None:
    if engine == "jax":
        out = run_jax(tasks, seed, layers)
    elif engine == "int8":
        out = run_int8(tasks, seed, layers)
    else:
        out = run_torch(engine[6:], tasks, seed, layers, short)
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    ap.add_argument("--tasks", nargs="+", default=["a", "b"], choices=["a", "b"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=32, help="32: dolly-v2-3b (fewer: a smoke test)")
    ap.add_argument(
        "--short",
        nargs="*",
        default=["torch-bf16"],
        choices=ENGINES,
        help=f"engines that generate only {SHORT_NEW} new tokens a task (bf16 matmuls have no "
        "fast path on AVX2 CPUs: ~2.5x slower than fp32; the per-token figures still compare)",
    )
    ap.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.tasks, args.seed, args.layers, args.child in args.short)
        return

    from timing import recorded

    with recorded("cpu_3b"):
        bw = bandwidth_gbs()
        from llmcxr_jax.models.gpt_neox import get_preset

        cfg = get_preset("dolly-v2-3b", vocab_size=VOCAB, num_layers=args.layers)
        fp32_bytes = cfg.num_params() * 4  # every weight read once per token
        floor = fp32_bytes / (bw * 1e9)

        def floor_s(engine: str, task: str) -> float:
            """Seconds a token to read the weights it needs: every layer, one row of the input
            embedding, and the head's rows it computes (ours: only the 1,024 image rows for a
            film), at the engine's bytes per weight, over the bandwidth measured just before
            that engine ran (this machine's bandwidth moves with its neighbours)."""
            rows = IMAGE_HI - IMAGE_LO if task == "b" and engine in ("jax", "int8") else VOCAB
            layers = cfg.num_params() - 2 * cfg.padded_vocab_size * cfg.hidden_size
            n = layers + (rows + 1) * cfg.hidden_size
            return n * BYTES_PER_WEIGHT.get(engine, 4) / (bws[engine] * 1e9)

        print(
            f"{args.layers} layers, {cfg.num_params() / 1e9:.2f} B parameters; "
            f"{os.cpu_count()} cores; read bandwidth {bw:.1f} GB/s; fp32 weights "
            f"{fp32_bytes / 1e9:.1f} GB, so the floor is {floor * 1e3:.0f} ms/token; "
            f"load average {os.getloadavg()[0]:.2f}\n"
        )
        results: dict = {}
        bws: dict[str, float] = {}
        for engine in args.engines:
            bws[engine] = bw if not bws else bandwidth_gbs()
            here = Path(__file__).resolve().parent
            env = dict(os.environ, PYTHONPATH=f"{here.parent}:{os.environ.get('PYTHONPATH', '')}")
            p = subprocess.run(
                [sys.executable, __file__, "--child", engine, "--tasks", *args.tasks]
                + ["--layers", str(args.layers), "--seed", str(args.seed)]
                + ["--short", *args.short],
                capture_output=True,
                text=True,
                env=env,
            )
            line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
            if p.returncode or not line:
                print(f"{engine}: failed (exit {p.returncode}): {p.stderr.strip()[-500:]}")
                continue
            results[engine] = json.loads(line[-1][7:])
            results[engine]["read_gbs"] = bws[engine]
        print(
            "| engine | task | s/sample | new tokens | tokens/s | prefill s | decode ms/token "
            "| read GB/s | x its floor | first call s | peak RSS GB |"
        )
        print("|---" * 11 + "|")
        for engine, r in results.items():
            for t in args.tasks:
                s, n = r[f"{t}_steady_s"], r[f"{t}_new_tokens"]
                eng_floor = floor_s(engine, t)
                vq = r.get("b_steady_vq_decode_s") if t == "b" else None
                extra = f" (VQ-GAN decode {vq:.1f} s of it)" if vq is not None else ""
                codes = f", {r['b_image_codes']} codes" if "b_image_codes" in r and t == "b" else ""
                pre = r[f"{t}_prefill_s"]
                step = (s - pre - (vq or 0.0)) / max(n - 1, 1)  # the tokens after the first
                print(
                    f"| {engine} | {t} | {s:.1f}{extra} | {n}{codes} | {n / s:.2f} | {pre:.1f} | "
                    f"{step * 1e3:.0f} | {bws[engine]:.1f} | {step / eng_floor:.2f} | "
                    f"{r.get(f'{t}_first_s', float('nan')):.1f} | {r['peak_rss_gb']:.1f} |"
                )
        if "jax" in results:
            mv = results["jax"]["xla_matvec_gbs"]
            print(
                f"\nOne layer's four fp32 products in XLA alone read "
                f"{mv:.1f} GB/s here, {mv / bws['jax']:.2f}x the read bandwidth measured before "
                f"the jax engine: the jax rows' ceiling is {bws['jax'] / mv:.2f}x their floor."
            )
        print("\nraw: " + json.dumps(results))


if __name__ == "__main__":
    main()
