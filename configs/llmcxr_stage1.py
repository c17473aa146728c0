"""LLM-CXR stage 1: dolly-v2-3b finetuned on every MIMIC-CXR-JPG train image.

Text = FINDINGS + " " + IMPRESSION (falling back to IMPRESSION), each image one direction
(CXR-to-report or report-to-CXR), VQA from the stage-2 set, mixed 0.8 : 0.2 with
databricks-dolly-15k. AdamW lr 5e-6 (betas 0.9/0.999, eps 1e-8, no weight decay), clip 1.0,
DeepSpeed-style log warm-up over 50 steps then constant, global batch 16, max length 2048
(longer samples dropped), 5 epochs, seed 42. bf16 compute on fp32 masters, FSDP, full
gradient checkpointing (as LLM-CXR): `llmcxr-jax plan --config configs/llmcxr_stage1.py` shows
it fits a v4-8 (4 chips, 32 GiB each).

    llmcxr-jax import-hf --hf-dir dolly-v2-3b --out ckpt/dolly --vocab-size 51305
    llmcxr-jax prepare-data --builder mimic_cxr_jpg --data-dir gs://b/tfds \\
        --manual-dir /data/mimic-cxr-jpg --codes-dir gs://b/codes
    llmcxr-jax train --config configs/llmcxr_stage1.py --workdir gs://b/stage1 \\
        --config.init.checkpoint=ckpt/dolly --config.tokenizer.path=dolly-v2-3b \\
        --config.data.data_dir=gs://b/tfds --config.data.dolly_jsonl=dolly-15k.jsonl
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = "dolly-v2-3b"  # models/gpt_neox.py PRESETS (used when no checkpoint is given)
    c.model_overrides = ml_collections.ConfigDict(
        {"dtype": "bfloat16", "scan_layers": True, "remat_policy": "full"}
    )
    c.init = ml_collections.ConfigDict({"checkpoint": "", "params_from": ""})
    # "codebook": image-code rows of embed_in from init.vqgan's codebook (a fixed projection,
    # image_embeddings.py) instead of random; "codebook_both": embed_out's too; "": random
    c.init.image_embeddings = ""
    c.init.vqgan = ""  # the VQ-GAN model checkpoint (train-vqgan's workdir/model)

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.path = ""  # dolly's tokenizer dir (tokenizer.json); "" trains a BPE
    c.tokenizer.num_image_codes = 1024
    c.tokenizer.vocab_size = 4096  # only for a trained BPE
    c.tokenizer.train_samples = 20000

    c.data = ml_collections.ConfigDict()
    c.data.builder = "mimic_cxr_jpg"
    c.data.builder_config = "paths"
    c.data.builder_kwargs = ml_collections.ConfigDict()
    c.data.data_dir = ""
    c.data.split = "train"
    c.data.eval_split = "validate"
    c.data.stage = 1
    c.data.num_codes = 256  # codes per image (16 x 16)
    c.data.num_image_codes = 1024  # codebook size
    c.data.max_len = 2048
    c.data.batch_size = 16
    c.data.mask_mode = "response"  # LLM-CXR's released code; "paragraph" = the paper's wording
    c.data.mix_weights = (0.8, 0.2)  # image-text : instructions
    c.data.dolly_jsonl = ""
    c.data.vqa = "synthesize"  # or "none"
    c.data.vqa_per_image = 4  # synthesised questions per stage-2 image, at most
    c.data.directions = "alternate"  # LLM-CXR: each image one direction; "both": each both
    c.data.seed = 42
    c.data.num_threads = 16
    c.data.worker_count = 0
    c.data.input_shards = 0  # input streams; 0: one per host (see data/pipeline.py)

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 5e-6
    c.optim.min_lr = 0.0
    c.optim.warmup_steps = 50
    c.optim.warmup = "log"  # DeepSpeed WarmupLR
    c.optim.decay = "constant"
    c.optim.decay_steps = 0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0
    c.optim.clip = 1.0

    # max_loss_fraction > 0: logits only at loss-masked positions (train/lm_step.py)
    c.loss = ml_collections.ConfigDict(
        {"z_loss": 0.0, "micro_batches": 1, "max_loss_fraction": 0.0}
    )
    c.mesh = (1, -1, 1)  # (data, fsdp, tensor): FSDP over every chip
    c.epochs = 5
    c.steps = 0  # 0: derived from epochs
    c.time_budget_s = 0.0  # > 0: steps set by the step time measured at the start (train/lm.py)
    c.log_every = 10
    c.eval_every = 1000
    c.eval_batches = 20
    c.sample_every = 2000
    c.ckpt_every = 1000
    c.keep_checkpoints = 3
    c.vqgan = ""  # a VQ-GAN checkpoint, to draw sample images as PNG
    c.seed = 42
    c.distributed = False  # True on multi-host TPU slices (launch/tpu_run.sh sets it)
    c.tensorboard = True
    return c
