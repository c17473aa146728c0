"""LM finetuning, stage 1 or stage 2 by config: the loop around `lm_step.train_step`.

    llmcxr-jax train --config configs/llmcxr_stage1.py --workdir gs://bucket/stage1

- Model: a model checkpoint (e.g. `import-hf` of dolly-v2-3b) grown to the tokenizer's
  vocabulary, a random model of a preset (the demo trains one from scratch), or, for stage 2,
  the parameters of a stage-1 run with a fresh optimizer.
- Parallelism from `sharding.py`: a (data, fsdp, tensor) mesh from the config (FSDP by default);
  parameters and optimizer state sharded by their logical axes; each host feeds its share of
  the batch; `jax.distributed.initialize()` first on multi-host TPU.
- Checkpoints (train/checkpoint.py): parameters, optimizer state, step, the Grain iterator
  state and the config; automatic resume from the workdir; SIGTERM saves and exits; a damaged
  newest checkpoint falls back to the previous one.
- Observability: clu metrics averaged between logs, TensorBoard events and metrics.jsonl, a
  progress line (loss, tokens/s, MFU, ETA), held-out loss, and sample generations (a report and
  an image, as text and PNG) written during training.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metrics as clu_metrics
from flax import nnx
from tqdm.auto import tqdm

from llmcxr_jax import checkpoint, sharding
from llmcxr_jax.data import instructions, pipeline
from llmcxr_jax.models.gpt_neox import GPTNeoX, get_preset, model_from_params, params_of
from llmcxr_jax.tokenizer import MultimodalTokenizer
from llmcxr_jax.train import checkpoint as train_ckpt
from llmcxr_jax.train import lm_step, optim
from llmcxr_jax.train.metrics import MetricWriter

# bf16 dense peak FLOP/s per chip, for the MFU estimate (none known for CPUs).
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}


def flops_per_token(cfg: Any, seq_len: int) -> float:
    """Training FLOPs per token: 6 x (matmul parameters) + attention scores (12 L D T)."""
    n = cfg.num_params() - cfg.vocab_size * cfg.hidden_size  # the input embedding is a lookup
    return 6.0 * n + 12.0 * cfg.num_layers * cfg.hidden_size * seq_len


def peak_flops() -> float | None:
    kind = jax.devices()[0].device_kind
    return next((v for k, v in PEAK_FLOPS.items() if kind.startswith(k)), None)


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def open_records(data: ml_collections.ConfigDict, split: str) -> Any:
    """A TFDS data source of the configured builder (images left undecoded: codes suffice)."""
    import tensorflow_datasets as tfds

    import llmcxr_jax.data.tfds  # noqa: F401  (registers our builders)

    name = data.builder + (f"/{data.builder_config}" if data.get("builder_config") else "")
    kwargs = dict(data.get("builder_kwargs", {}) or {})
    builder = tfds.builder(
        name, data_dir=data.data_dir or None, file_format="array_record", **kwargs
    )
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"{name} is not prepared in {data.data_dir or '~/tensorflow_datasets'}: run "
            "`llmcxr-jax prepare-data` (or the demo) first"
        )
    decoders = {"image": tfds.decode.SkipDecoding()} if "image" in builder.info.features else None
    return builder.as_data_source(split, decoders=decoders)


def load_tokenizer(
    config: ml_collections.ConfigDict, records: Any, workdir: Path, num_codes: int
) -> MultimodalTokenizer:
    """The configured tokenizer, or a BPE trained on the data's text (kept in the workdir)."""
    saved = workdir / "tokenizer"
    if (saved / "tokenizer.json").exists():
        return MultimodalTokenizer.from_pretrained(saved)
    t = config.tokenizer
    if t.get("path"):
        tok = MultimodalTokenizer.from_pretrained(t.path, t.get("num_image_codes") or None)
    else:
        texts = []
        for i in range(min(len(records), t.get("train_samples", 20000))):
            r = records[i]
            texts.append(pipeline._str(r["findings"]) + "\n" + pipeline._str(r["impression"]))
        texts += list(instructions.CXR_TO_REPORT + instructions.REPORT_TO_CXR)
        texts += [instructions.INTRO] * 10
        tok = MultimodalTokenizer.train_bpe(
            texts, vocab_size=t.vocab_size, num_image_codes=t.num_image_codes
        )
    if tok.num_image_codes != num_codes:
        raise ValueError(
            f"tokenizer has {tok.num_image_codes} image codes, the data's VQ-GAN {num_codes}"
        )
    tok.save(saved)
    return tok


def build_model(
    config: ml_collections.ConfigDict, tok: MultimodalTokenizer, mesh: jax.sharding.Mesh
) -> GPTNeoX:
    """The LM to train, before any checkpoint of this run is restored over it.

    From `init.checkpoint` (an imported LM), `init.params_from` (stage 2: a stage-1 run) or a
    random model of `config.model`; grown to the tokenizer's vocabulary if smaller; with
    `init.image_embeddings` ("codebook", "codebook_both"), the image-code embedding rows of a
    run that starts fresh are then set from `init.vqgan`'s codebook (image_embeddings.py).
    """
    init = config.init
    overrides = dict(config.get("model_overrides", {}) or {})
    image_rows, codebook = _image_embedding_plan(init, tok)
    if init.get("params_from") or init.get("checkpoint"):
        if init.get("params_from"):  # stage 2: a stage-1 run's parameters, a fresh optimizer
            src = Path(init.params_from)
            src = src / "model" if (src / "model" / checkpoint.CONFIG_FILE).exists() else src
        else:
            src = Path(init.checkpoint)
        saved = checkpoint.load_config(src, "gpt_neox")
        # shape fields in model_overrides describe a model trained from scratch; a loaded
        # checkpoint keeps its own shape (a mismatch is an error), only execution options apply
        execution = checkpoint.kinds()["gpt_neox"].execution_fields
        wrong = {
            k: (v, getattr(saved, k))
            for k, v in overrides.items()
            if k not in execution and getattr(saved, k) != v
        }
        if wrong:
            raise ValueError(f"{src}: model_overrides differ from the checkpoint's: {wrong}")
        exec_overrides = {k: v for k, v in overrides.items() if k in execution}
        model = checkpoint.load_model(src, mesh=mesh, **exec_overrides)
    else:
        cfg = get_preset(
            config.model, vocab_size=tok.vocab_size, vocab_pad_multiple=128, **overrides
        )
        with jax.set_mesh(mesh):
            model = GPTNeoX(cfg, rngs=nnx.Rngs(config.seed))
    if model.config.vocab_size != tok.vocab_size:
        from llmcxr_jax.vocab import resize_vocab_params

        if model.config.vocab_size > tok.vocab_size:
            raise ValueError(
                f"the model's vocabulary ({model.config.vocab_size}) is larger than "
                f"the tokenizer's ({tok.vocab_size})"
            )
        cfg, params = resize_vocab_params(
            model.config, params_of(model), tok.vocab_size, rng=config.seed
        )
        model = model_from_params(cfg, params)
        print(
            f"vocabulary grown to {tok.vocab_size} (text {tok.text_vocab_size} + "
            f"{tok.num_image_codes} image codes)",
            flush=True,
        )
    if image_rows:
        from llmcxr_jax.image_embeddings import init_image_rows

        # a checkpoint's text rows give the scale; a model from scratch has its initializer's
        std = None if init.get("checkpoint") else model.config.initializer_range
        model = init_image_rows(model, tok, codebook, seed=config.seed, rows=image_rows, std=std)
        print(
            f"image-token embeddings ({', '.join(image_rows)} rows {tok.text_vocab_size}.."
            f"{tok.vocab_size - 1}) initialised from the codebook of {init.vqgan} "
            f"({codebook.shape[0]} x {codebook.shape[1]} -> {model.config.hidden_size}, "
            f"seed {config.seed})",
            flush=True,
        )
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, sharding.shard_state(state, mesh))


def _image_embedding_plan(
    init: ml_collections.ConfigDict, tok: MultimodalTokenizer
) -> tuple[tuple[str, ...], np.ndarray | None]:
    """The tables `init.image_embeddings` asks to initialise and the codebook, checked early
    (before a large LM is loaded). Nothing when `init.params_from` is set: stage 2 starts from
    stage 1's trained rows."""
    from llmcxr_jax import image_embeddings

    rows = image_embeddings.rows_for_mode(init.get("image_embeddings", "") or "")
    if not rows:
        return (), None
    if not init.get("vqgan"):
        raise ValueError(
            f"init.image_embeddings={init.image_embeddings!r} needs init.vqgan: the VQ-GAN "
            "model checkpoint whose codebook encoded the data (train-vqgan's workdir/model)"
        )
    if init.get("params_from"):
        print(
            f"init.image_embeddings={init.image_embeddings!r} not applied: init.params_from "
            "starts from trained embeddings",
            flush=True,
        )
        return (), None
    codebook = image_embeddings.load_codebook(init.vqgan)
    if codebook.shape[0] != tok.num_image_codes:
        raise ValueError(
            f"init.vqgan {init.vqgan}: its codebook has {codebook.shape[0]} entries but the "
            f"tokenizer has {tok.num_image_codes} image codes"
        )
    return rows, codebook


def estimate_steps(
    config: ml_collections.ConfigDict, examples: Any, tok: MultimodalTokenizer, n_instructions: int
) -> int:
    """Steps for `config.epochs` passes over the image-text examples (packed rows)."""
    if config.get("steps"):
        return int(config.steps)
    rng = np.random.default_rng(0)
    idx = rng.choice(len(examples), size=min(len(examples), 500), replace=False)
    mean_len = np.mean([len(tok.encode_paragraph(examples[int(i)])[0]) for i in idx])
    w_img = config.data.mix_weights[0] if n_instructions else 1.0
    tokens = config.epochs * len(examples) * mean_len / w_img
    return max(1, math.ceil(tokens / (config.data.batch_size * config.data.max_len * 0.97)))


def _sample(
    model: GPTNeoX, tok: MultimodalTokenizer, records: Any, examples: Any, num_codes: int
) -> dict[str, Any]:
    """A report for one held-out image and an image (codes) for one held-out report."""
    from llmcxr_jax import decode

    for i in range(len(examples.examples)):
        ex = examples.examples[i]
        if ex.task != "vqa":
            break
    meta = examples.meta[ex.record]
    codes = meta["codes"].astype(np.int32)
    text = examples.texts[ex.record]
    stop = [tok.end_id]
    ids, _ = tok.encode_paragraph(instructions.cxr_to_report_prompt(codes))
    out = decode.generate(
        model,
        ids[None],
        max_new_tokens=160,
        stop_tokens=stop,
        token_mask=tok.allowed_mask("text", model.config.padded_vocab_size),
    )
    n = int(out.lengths[0])
    report = tok.decode_text(np.asarray(out.tokens[0, :n]))
    ids, _ = tok.encode_paragraph(instructions.report_to_cxr_prompt(text))
    prefix = np.concatenate([ids, [tok.image_begin_id]])
    out = decode.generate(
        model,
        prefix[None],
        max_new_tokens=num_codes,
        token_mask=tok.allowed_mask("image", model.config.padded_vocab_size),
    )
    gen_codes = np.asarray(out.tokens[0]) - tok.text_vocab_size
    return {
        "image_id": meta["id"],
        "reference_report": text,
        "generated_report": report,
        "report_for_image": text,
        "generated_codes": gen_codes.tolist(),
    }


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def train(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, progress: bool = True
) -> dict[str, float]:
    """Train (or resume) in `workdir`; returns the last logged metrics.

    With `config.time_budget_s` the step count is set by the step time measured here (see
    `_steps_for_budget`) instead of `epochs`/`steps`."""
    t_train = time.time()
    if config.get("distributed"):
        jax.distributed.initialize()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    mesh = sharding.make_mesh(tuple(config.mesh))
    num_codes = config.data.num_codes

    records = open_records(config.data, config.data.split)
    tok = load_tokenizer(config, records, workdir, config.data.num_image_codes)
    dolly: list[dict[str, str]] = []
    if config.data.get("dolly_jsonl"):
        dolly, problems = instructions.read_dolly_jsonl(config.data.dolly_jsonl)
        if problems:
            print(f"{len(problems)} instruction records skipped, e.g. {problems[0]}", flush=True)
    batches, counters = pipeline.from_config(
        config, records, tok, num_codes=num_codes, mesh=mesh, instruction_records=dolly
    )
    image_text = pipeline.ImageTextExamples(
        records,
        stage=config.data.stage,
        num_codes=num_codes,
        n_embed=tok.num_image_codes,
        seed=config.data.seed,
        vqa_mode="none",
    )
    steps = estimate_steps(config, image_text, tok, len(dolly))
    if config.optim.get("decay") == "cosine" and not config.optim.get("decay_steps"):
        # decay_steps 0 means: reach min_lr at the end of this run
        config.optim.decay_steps = max(steps - int(config.optim.warmup_steps), 1)

    model = build_model(config, tok, mesh)
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optim.optimizer(config.optim)
    state = lm_step.init_state(params, tx)
    state_sh = jax.tree.map(
        lambda s: jax.sharding.NamedSharding(mesh, s),
        lm_step.TrainState(
            step=jax.sharding.PartitionSpec(),
            skipped=jax.sharding.PartitionSpec(),
            params=sharding.state_specs(state.params, mesh),
            opt_state=sharding.state_specs(state.opt_state, mesh),
        ),
        is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec),
    )
    state = jax.device_put(state, state_sh)
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    batch_sh = sharding.logical_sharding(mesh, ("activation_batch", None))
    loss_cfg = lm_step.LossConfig.from_config(config.loss)

    def jit_step(tx: optax.GradientTransformation) -> Any:
        return jax.jit(
            lm_step.make_train_step(graphdef, tx, loss_cfg),
            in_shardings=(state_sh, batch_sh, rep),
            out_shardings=(state_sh, rep),
            donate_argnums=(0,),
        )

    step_fn = jit_step(tx)
    eval_fn = jax.jit(
        lm_step.make_eval_step(graphdef),
        in_shardings=(state_sh.params, batch_sh),
        out_shardings=rep,
    )

    ckpt = train_ckpt.TrainCheckpointer(
        workdir, every=config.ckpt_every, keep=config.keep_checkpoints
    )
    start = 0
    resumed = ckpt.restore_latest(state)
    if resumed is not None:
        start, state, extra = resumed
        batches.set_state(extra["data"])
        print(f"resumed from {ckpt.directory}/{start}", flush=True)
    if config.get("time_budget_s"):
        steps = _steps_for_budget(config, workdir, step_fn, state, batches, t_train)
        if config.optim.get("decay") == "cosine":
            config.optim.decay_steps = max(steps - int(config.optim.warmup_steps), 1)
        step_fn = jit_step(optim.optimizer(config.optim))  # same state layout, new schedule
    writer = MetricWriter(workdir, enable_tensorboard=config.get("tensorboard", True))
    fpt, peak = flops_per_token(model.config, config.data.max_len), peak_flops()
    avg = None
    last: dict[str, float] = {}
    t_log = time.time()
    t_start, step = time.time(), start
    bar = tqdm(
        total=steps, initial=start, desc=f"train stage {config.data.stage}", disable=not progress
    )
    with train_ckpt.PreemptionGuard() as guard, jax.set_mesh(mesh):
        while step < steps:
            batch = batches.next()
            state, metrics = step_fn(state, batch, jax.random.key(step))
            step += 1
            bar.update(1)
            update = clu_metrics.Average.from_model_output(metrics["loss"])
            avg = update if avg is None else avg.merge(update)
            if step % config.log_every == 0 or step == steps:
                now = time.time()
                rows = config.data.batch_size * config.data.max_len
                tok_s = rows * (step - (last.get("step") or start)) / max(now - t_log, 1e-9)
                last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                last.update(
                    step=step,
                    loss_avg=float(avg.compute()),
                    tokens_per_s=tok_s,
                    lr=float(optim.schedule(config.optim)(step)),
                )
                if peak:
                    last["mfu"] = tok_s * fpt / (peak * jax.device_count())
                last.update({f"skipped_{k}": v for k, v in counters.as_dict().items()})
                writer.scalars(step, last)
                eta = (steps - step) * (now - t_start) / max(step - start, 1)
                bar.set_postfix(
                    loss=f"{last['loss_avg']:.3f}",
                    tok_s=f"{tok_s:,.0f}",
                    mfu=f"{last['mfu']:.1%}" if peak else "-",
                    eta=f"{eta / 60:.0f}m",
                )
                avg, t_log = None, now
            if config.eval_every and step % config.eval_every == 0:
                last.update(
                    _evaluate(config, tok, mesh, eval_fn, state.params, num_codes, writer, step)
                )
            if config.sample_every and step % config.sample_every == 0:
                _write_sample(
                    workdir,
                    step,
                    graphdef,
                    state.params,
                    tok,
                    records,
                    image_text,
                    num_codes,
                    writer,
                    config,
                )
            if ckpt.should_save(step) or step == steps or guard.requested:
                ckpt.save(step, state, {"data": batches.get_state(), "step": step})
            if guard.requested:
                print(f"SIGTERM: saved step {step} to {ckpt.directory}; exiting", flush=True)
                break
    bar.close()
    ckpt.close()
    writer.close()
    if step >= steps:
        model = nnx.merge(graphdef, jax.device_get(state.params))
        checkpoint.save_model(workdir / "model", model, overwrite=True)
        if (workdir / "model" / "tokenizer").exists():
            shutil.rmtree(workdir / "model" / "tokenizer")
        shutil.copytree(workdir / "tokenizer", workdir / "model" / "tokenizer")
    drops = counters.as_dict()
    if drops:
        print(f"train: skipped (counted, not trained on): {drops}", flush=True)
    return last


BUDGET_FILE = "budget_steps.json"


def _steps_for_budget(
    config: ml_collections.ConfigDict,
    workdir: Path,
    step_fn: Any,
    state: lm_step.TrainState,
    batches: Any,
    t_train: float,
    reps: int = 3,
) -> int:
    """Steps that fit in what is left of `config.time_budget_s` (counted from `t_train`).

    Why measured: tokens/s differ 2x between the CPUs this demo runs on. The step is timed on a
    copy of the state and one batch (the data iterator is put back), after one compiling call;
    the schedule's step is compiled once more afterwards, so that compile time is counted
    twice, and 5% is left for evaluation and checkpoints. The result is written to the workdir
    so a resumed run keeps its schedule.
    """
    saved = workdir / BUDGET_FILE
    if saved.exists():
        return int(json.loads(saved.read_text())["steps"])
    data_state = batches.get_state()
    batch = batches.next()
    batches.set_state(data_state)
    probe = jax.tree.map(jnp.copy, state)
    t0 = time.time()
    probe, m = step_fn(probe, batch, jax.random.key(0))
    jax.block_until_ready(m)
    compile_s = time.time() - t0
    t0 = time.time()
    for _ in range(reps):
        probe, m = step_fn(probe, batch, jax.random.key(0))
    jax.block_until_ready(m)
    step_s = (time.time() - t0) / reps
    del probe
    left = float(config.time_budget_s) - (time.time() - t_train) - compile_s
    steps = max(int(0.95 * left / step_s), int(config.optim.warmup_steps) + 1)
    print(
        f"time budget {float(config.time_budget_s):.0f} s: {step_s:.3f} s per step measured, "
        f"{steps} steps",
        flush=True,
    )
    tmp = workdir / f".{BUDGET_FILE}.tmp"
    tmp.write_text(json.dumps({"steps": steps, "step_s": step_s, "compile_s": compile_s}))
    os.replace(tmp, saved)
    return steps


def _evaluate(config, tok, mesh, eval_fn, params, num_codes, writer, step) -> dict[str, float]:
    """Mean loss on a fixed set of held-out batches (same batches at every evaluation)."""
    records = open_records(config.data, config.data.eval_split)
    batches, _ = pipeline.from_config(config, records, tok, num_codes=num_codes, mesh=mesh)
    sums: dict[str, float] = {}
    for _ in range(config.eval_batches):
        aux = jax.device_get(eval_fn(params, batches.next()))
        for k, v in aux.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    out = {
        "eval_loss": sums["ce_sum"] / max(sums["tokens"], 1.0),
        "eval_accuracy": sums["correct"] / max(sums["tokens"], 1.0),
    }
    writer.scalars(step, out)
    return out


def _write_sample(
    workdir, step, graphdef, params, tok, records, examples, num_codes, writer, config
) -> None:
    model = nnx.merge(graphdef, jax.device_get(params))
    s = _sample(model, tok, records, examples, num_codes)
    out = workdir / "samples"
    out.mkdir(exist_ok=True)
    (out / f"step_{step:06d}.json").write_text(json.dumps(s, indent=2))
    if config.get("vqgan"):
        from llmcxr_jax.data.images import image_grid, save_png

        vq = checkpoint.load_model(config.vqgan, expect="vqgan")
        img = np.clip(np.asarray(vq.decode(jnp.asarray([s["generated_codes"]])))[0], -1, 1)
        save_png(img, out / f"step_{step:06d}.png")
        writer.image(step, "generated_image", image_grid(img[None], ncols=1))
