"""LM finetuning, stage 1 or stage 2 by config: `lm_step.train_step` in the shared `loop.run`.

    llmcxr-jax train --config configs/llmcxr_stage1.py --workdir gs://bucket/stage1

- Model: a model checkpoint (e.g. `import-hf` of dolly-v2-3b) grown to the tokenizer's
  vocabulary, a random model of a preset (the demo trains one from scratch), or, for stage 2,
  the parameters of a stage-1 run with a fresh optimizer.
- Parallelism from `sharding.py`: a (data, fsdp, tensor) mesh from the config (FSDP by default);
  parameters and optimizer state sharded by their logical axes; each host feeds its share of
  the batch; `jax.distributed.initialize()` first on multi-host TPU. The jitted, sharded step
  is `lm_step.jit_train_step`, the one `plan` compiles.
- Checkpoints (loop.py, train/state_checkpoint.py): parameters, optimizer state, step, the
  Grain iterator state and the config; automatic resume from the workdir; SIGTERM saves and
  exits; a damaged newest checkpoint falls back to the previous one.
- Observability: clu metrics averaged between logs, TensorBoard events and metrics.jsonl, a
  progress line (loss, tokens/s, MFU, ETA), held-out loss, and sample generations (a report and
  an image, greedy through `generate.Generator`, as text and PNG) written during training.
"""

from __future__ import annotations

import json
import logging
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
from clu import metrics as clu_metrics
from flax import nnx

from llmcxr_jax import accelerators, checkpoint, distributed, sharding
from llmcxr_jax.accelerators import flops_per_token
from llmcxr_jax.data import instructions, pipeline
from llmcxr_jax.data.records import field_text, open_records
from llmcxr_jax.errors import InputError
from llmcxr_jax.generate import Generator
from llmcxr_jax.models.gpt_neox import GPTNeoX, get_preset, model_from_params, params_of
from llmcxr_jax.tokenizer import MultimodalTokenizer
from llmcxr_jax.train import lm_step, loop, optim

log = logging.getLogger(__name__)


def peak_flops() -> float | None:
    """bf16 dense peak FLOP/s of this run's chips (accelerators.py), None on CPUs."""
    return accelerators.peak_flops(jax.devices()[0].device_kind)


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def load_tokenizer(
    config: ml_collections.ConfigDict, records: Any, workdir: Path, num_codes: int
) -> MultimodalTokenizer:
    """The configured tokenizer, or a BPE trained on the data's text (kept in the workdir)."""
    saved = workdir / "tokenizer"
    # Every host looks before the barrier, so none can see the file the primary writes below
    # and skip the barrier after it (the hosts would then disagree on every later collective).
    found = (saved / "tokenizer.json").exists()
    distributed.barrier("llmcxr_tokenizer_looked")
    if found:
        return MultimodalTokenizer.from_pretrained(saved)
    t = config.tokenizer
    if t.get("path"):
        tok = MultimodalTokenizer.from_pretrained(t.path, t.get("num_image_codes") or None)
    else:
        texts = []
        for i in range(min(len(records), t.get("train_samples", 20000))):
            r = records[i]
            texts.append(field_text(r["findings"]) + "\n" + field_text(r["impression"]))
        texts += list(instructions.CXR_TO_REPORT + instructions.REPORT_TO_CXR)
        texts += [instructions.INTRO] * 10
        tok = MultimodalTokenizer.train_bpe(
            texts, vocab_size=t.vocab_size, num_image_codes=t.num_image_codes
        )
    if tok.num_image_codes != num_codes:
        raise InputError(
            f"tokenizer has {tok.num_image_codes} image codes, the data's VQ-GAN {num_codes}"
        )
    if distributed.is_primary():  # every host made the same one (same data, same seed)
        tok.save(saved)
    distributed.barrier("llmcxr_tokenizer_saved")
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
            src = checkpoint.model_dir(init.params_from)
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
            raise InputError(f"{src}: model_overrides differ from the checkpoint's: {wrong}")
        exec_overrides = {k: v for k, v in overrides.items() if k in execution}
        model = checkpoint.load_model(src, mesh=mesh, **exec_overrides)
    else:
        cfg = get_preset(
            config.model, vocab_size=tok.vocab_size, vocab_pad_multiple=128, **overrides
        )
        with jax.set_mesh(mesh):
            model = GPTNeoX(cfg, rngs=nnx.Rngs(config.seed))
    if model.config.vocab_size != tok.vocab_size:
        from llmcxr_jax.models.gpt_neox import resize_vocab_params

        if model.config.vocab_size > tok.vocab_size:
            raise InputError(
                f"the model's vocabulary ({model.config.vocab_size}) is larger than "
                f"the tokenizer's ({tok.vocab_size})"
            )
        cfg, params = resize_vocab_params(
            model.config, params_of(model), tok.vocab_size, rng=config.seed
        )
        model = model_from_params(cfg, params)
        log.info(
            f"vocabulary grown to {tok.vocab_size} (text {tok.text_vocab_size} + "
            f"{tok.num_image_codes} image codes)"
        )
    if image_rows:
        from llmcxr_jax.image_embeddings import init_image_rows

        # a checkpoint's text rows give the scale; a model from scratch has its initializer's
        std = None if init.get("checkpoint") else model.config.initializer_range
        model = init_image_rows(model, tok, codebook, seed=config.seed, rows=image_rows, std=std)
        log.info(
            f"image-token embeddings ({', '.join(image_rows)} rows {tok.text_vocab_size}.."
            f"{tok.vocab_size - 1}) initialised from the codebook of {init.vqgan} "
            f"({codebook.shape[0]} x {codebook.shape[1]} -> {model.config.hidden_size}, "
            f"seed {config.seed})"
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
        raise InputError(
            f"init.image_embeddings={init.image_embeddings!r} needs init.vqgan: the VQ-GAN "
            "model checkpoint whose codebook encoded the data (train-vqgan's workdir/model)"
        )
    if init.get("params_from"):
        log.warning(
            f"init.image_embeddings={init.image_embeddings!r} not applied: init.params_from "
            "starts from trained embeddings"
        )
        return (), None
    codebook = image_embeddings.load_codebook(init.vqgan)
    if codebook.shape[0] != tok.num_image_codes:
        raise InputError(
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


def _sample(gen: Generator, examples: Any) -> dict[str, Any]:
    """A report for one held-out image and an image (codes) for one held-out report, both
    greedy, through `Generator` (as `llmcxr-jax generate` would give them)."""
    from llmcxr_jax import decode

    for i in range(len(examples.examples)):
        ex = examples.examples[i]
        if ex.task != "vqa":
            break
    meta = examples.meta[ex.record]
    text = examples.texts[ex.record]
    report = gen.reports(
        [meta["codes"].astype(np.int32)], sampler=decode.GREEDY, max_new_tokens=160
    )
    image = gen.images([text], sampler=decode.GREEDY)
    for r in (report, image):
        if r.failures:
            raise InputError(f"sample of {meta['id']}: {r.failures[0]}")
    return {
        "image_id": meta["id"],
        "reference_report": text,
        "generated_report": report.values[0],
        "report_for_image": text,
        "generated_codes": image.values[0].tolist(),
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
    distributed.initialize(auto=bool(config.get("distributed")))
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if distributed.is_primary():
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    mesh = sharding.make_mesh(tuple(config.mesh))
    num_codes = config.data.num_codes

    records = open_records(config.data, config.data.split)
    tok = load_tokenizer(config, records, workdir, config.data.num_image_codes)
    dolly: list[dict[str, str]] = []
    if config.data.get("dolly_jsonl"):
        dolly, problems = instructions.read_dolly_jsonl(config.data.dolly_jsonl)
        if problems:
            log.warning(f"{len(problems)} instruction records skipped, e.g. {problems[0]}")
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
    state_sh = lm_step.state_shardings(state, mesh)
    state = jax.device_put(state, state_sh)
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    batch_sh = sharding.logical_sharding(mesh, lm_step.BATCH_AXES)
    loss_cfg = lm_step.LossConfig.from_config(config.loss)
    step_fn = lm_step.jit_train_step(graphdef, tx, loss_cfg, state_sh, mesh)
    eval_fn = jax.jit(
        lm_step.make_eval_step(graphdef),
        in_shardings=(state_sh.params, batch_sh),
        out_shardings=rep,
    )
    if config.get("time_budget_s"):
        # measured on this run's state before its checkpoint is restored: a resumed run reads
        # the step count its first run wrote (BUDGET_FILE) and measures nothing
        steps = _steps_for_budget(config, workdir, step_fn, state, batches, t_train)
        if config.optim.get("decay") == "cosine":
            config.optim.decay_steps = max(steps - int(config.optim.warmup_steps), 1)
        tx = optim.optimizer(config.optim)  # same state layout, new schedule
        step_fn = lm_step.jit_train_step(graphdef, tx, loss_cfg, state_sh, mesh)

    fpt, peak = flops_per_token(model.config, config.data.max_len), peak_flops()
    lr = optim.schedule(config.optim)

    def log_window(window: list[loop.Metrics], at: loop.Progress):
        avg = clu_metrics.Average.from_model_output(window[0]["loss"])
        for m in window[1:]:
            avg = avg.merge(clu_metrics.Average.from_model_output(m["loss"]))
        rows = config.data.batch_size * config.data.max_len
        tok_s = rows * at.log_steps / max(at.log_seconds, 1e-9)
        last = {k: float(v) for k, v in jax.device_get(window[-1]).items()}
        last.update(
            step=at.step, loss_avg=float(avg.compute()), tokens_per_s=tok_s, lr=float(lr(at.step))
        )
        if peak:
            last["mfu"] = tok_s * fpt / (peak * jax.device_count())
        last.update({f"skipped_{k}": v for k, v in counters.as_dict().items()})
        postfix = {
            "loss": f"{last['loss_avg']:.3f}",
            "tok_s": f"{tok_s:,.0f}",
            "mfu": f"{last['mfu']:.1%}" if peak else "-",
            "eta": f"{at.eta_s / 60:.0f}m",
        }
        return last, postfix

    def sample(step: int, state: lm_step.TrainState, batch: Any, writer: Any) -> None:
        _write_sample(
            workdir, step, graphdef, state.params, tok, image_text, num_codes, writer, config
        )

    def export(state: lm_step.TrainState) -> None:
        # one host holds only its shards of the weights: every host saves its part
        params = state.params if jax.process_count() > 1 else jax.device_get(state.params)
        checkpoint.save_model(workdir / "model", nnx.merge(graphdef, params), overwrite=True)
        if distributed.is_primary():
            if (workdir / "model" / "tokenizer").exists():
                shutil.rmtree(workdir / "model" / "tokenizer")
            shutil.copytree(workdir / "tokenizer", workdir / "model" / "tokenizer")
        distributed.barrier("llmcxr_exported")

    _, last = loop.run(
        lambda state, batch, step: step_fn(state, batch, jax.random.key(step)),
        state,
        batches,
        loop.Schedule.from_config(config, steps),
        workdir=workdir,
        log=log_window,
        evaluate=lambda step, state: _evaluate(config, tok, mesh, eval_fn, state.params, num_codes),
        sample=sample,
        export=export,
        mesh=mesh,
        tensorboard=config.get("tensorboard", True),
        progress=progress,
        desc=f"train stage {config.data.stage}",
    )
    drops = counters.as_dict()
    if drops:
        log.warning(f"train: skipped (counted, not trained on): {drops}")
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
    steps = distributed.from_primary(steps)  # every host runs host 0's count
    log.info(
        f"time budget {float(config.time_budget_s):.0f} s: {step_s:.3f} s per step measured, "
        f"{steps} steps"
    )
    if distributed.is_primary():
        tmp = workdir / f".{BUDGET_FILE}.tmp"
        tmp.write_text(json.dumps({"steps": steps, "step_s": step_s, "compile_s": compile_s}))
        os.replace(tmp, saved)
    return steps


def _evaluate(config, tok, mesh, eval_fn, params, num_codes) -> dict[str, float]:
    """Mean loss on a fixed set of held-out batches (same batches at every evaluation)."""
    records = open_records(config.data, config.data.eval_split)
    batches, _ = pipeline.from_config(config, records, tok, num_codes=num_codes, mesh=mesh)
    sums: dict[str, float] = {}
    for _ in range(config.eval_batches):
        aux = jax.device_get(eval_fn(params, batches.next()))
        for k, v in aux.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    return {
        "eval_loss": sums["ce_sum"] / max(sums["tokens"], 1.0),
        "eval_accuracy": sums["correct"] / max(sums["tokens"], 1.0),
    }


def _write_sample(workdir, step, graphdef, params, tok, examples, num_codes, writer, config):
    """`samples/step_XXXXXX.json` (and, with `config.vqgan`, the image as PNG and in
    TensorBoard) of the model at `params`."""
    model = nnx.merge(graphdef, jax.device_get(params))
    vq = checkpoint.load_model(config.vqgan, expect="vqgan") if config.get("vqgan") else None
    gen = Generator(model, tok, vq, num_codes=num_codes, batch_size=1)
    s = _sample(gen, examples)
    out = workdir / "samples"
    out.mkdir(exist_ok=True)
    (out / f"step_{step:06d}.json").write_text(json.dumps(s, indent=2))
    if vq is not None:
        from llmcxr_jax.data.images import image_grid, save_png

        img = gen.decode(np.asarray(s["generated_codes"], np.int32))
        save_png(img, out / f"step_{step:06d}.png")
        writer.image(step, "generated_image", image_grid(img[None], ncols=1))
