"""`make demo` / `llmcxr-jax demo`: the whole recipe on the embedded phantoms, on a CPU.

Phantom films (64x64) -> a small VQ-GAN with the clinical loss (configs/vqgan_demo.py) ->
codes for every film -> the cxr_phantoms/64 TFDS data set with codes -> a BPE tokenizer ->
stage 1 and stage 2 of a small LM (configs/demo.py) -> generation and the paper's evaluation
on the held-out test split. Arg `test` shrinks every step for the test suite.
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # phantom films per split (disjoint patients); the VQ-GAN trains on the train split only
    c.train_size = 2400
    c.validate_size = 48
    c.test_size = 96
    c.seed = 0
    # data-parallel devices for the VQ-GAN, its classifier and encoding (0: every local device,
    # at most 8, that divides the batches; `llmcxr-jax demo` makes one CPU device per core: the
    # convolutions then use every core, about 2x on 2 cores)
    c.devices = 0

    # the time budget: 0 = this recipe as it stands (`recipe_minutes` on 2 cores of the CI
    # machine); `llmcxr-jax demo --minutes N` scales it (llmcxr_jax/demo.py: scale_to_minutes)
    c.minutes = 0.0
    c.recipe_minutes = 10.0
    c.lm_share = 0.55  # of a --minutes budget, LM stage 1's share (the rest: VQ-GAN, eval, ...)
    c.vqgan_steps = 300
    c.classifier_steps = 300

    # step            config file           --config overrides
    c.vqgan_config = "vqgan_demo.py"
    c.vqgan_overrides = (
        "--config.ckpt_every=100",
        "--config.sample_every=100",
    )
    c.stage1_config = "demo.py"
    # image-token embeddings start from the VQ-GAN codebook (llmcxr_jax/image_embeddings.py)
    c.stage1_overrides = ("--config.init.image_embeddings=codebook",)
    c.stage2_config = "demo.py:stage2"
    c.stage2_overrides = ()

    # evaluation (eval/evaluate.py)
    c.eval = ml_collections.ConfigDict()
    c.eval.num_reports = 8  # sampled reports per test film: the AUROC score is their fraction
    c.eval.num_images = 4  # films generated per test report: the classifier scores are averaged
    c.eval.top_p = 0.92  # LLM-CXR's sampling
    c.eval.vqa_questions = 2  # per test film
    c.eval.max_report_tokens = 128  # phantom reports are short
    c.eval.batch_size = 32
    c.eval.max_items = 0  # 0 = the whole test split
    c.eval.bootstrap = 1000  # resamples for the 95% intervals (0: none)
    # which CXR-to-report score the bars are checked on: "sampled" (the paper's: the fraction
    # of num_reports sampled reports stating a finding) or "probability" (the model's p(yes)
    # to the presence question, deterministic); both are always reported
    c.eval.headline = "sampled"

    # the bars `make demo` is checked against (the summary prints PASS/FAIL for each)
    c.bars = ml_collections.ConfigDict()
    c.bars.minutes = 10.0  # Intel Xeon, 2 cores (this project's CI machine)
    c.bars.minutes_amd = 15.0  # the slower AMD EPYC kind
    c.bars.auroc_micro = 0.80  # both directions
    c.bars.auroc_ci_low = 0.75  # the lower end of the 95% interval
    c.bars.control_max = 0.60  # mismatched inputs must fall towards chance
    c.bars.kept_min = 0.95  # classifier AUROC on reconstructions over on the real films
    c.bars.psnr_min = 25.0  # dB, VQ-GAN reconstructions of the test films

    if arg == "test":
        c.train_size, c.validate_size, c.test_size = 48, 8, 8
        c.vqgan_config = "vqgan_demo.py:test"
        c.vqgan_steps, c.classifier_steps = 4, 4
        c.vqgan_overrides = ("--config.model=demo-f8", "--config.ckpt_every=4")
        c.stage1_config = "demo.py:test"
        c.stage1_overrides = (
            "--config.steps=6",
            "--config.ckpt_every=6",
            "--config.eval_every=0",
            "--config.init.image_embeddings=codebook",
        )
        c.stage2_config = "demo.py:stage2,test"
        c.stage2_overrides = ("--config.steps=4", "--config.ckpt_every=4", "--config.eval_every=0")
        c.eval.num_reports = 2
        c.eval.vqa_questions = 1
        c.eval.batch_size = 8
        c.eval.bootstrap = 50
        c.devices = 2
    return c
