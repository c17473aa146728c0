"""The demo's LM: a small GPT-NeoX trained from scratch on the embedded phantom data set.

64x64 phantoms, the demo VQ-GAN (f8: 64 codes per image, a 256-entry codebook), a BPE
tokenizer trained on the phantom reports, rows of 256 tokens, on a CPU. Arg `stage2` gives the
second stage; `test` shrinks everything for the test suite.

Measured choices (2 CPU cores, ~8 minutes of LM training; `make demo`'s AUROC figures):
- A small model seeing more tokens learns more in a fixed time than a larger one seeing fewer:
  hidden 128 runs at ~10k tokens/s here, hidden 256 at ~3.5k, and reached higher AUROC.
- Full rotary (`rotary_pct` 1.0, dolly uses 0.25): with 32-dim heads, 0.25 leaves 4 rotary
  frequencies, too few to tell the 64 image positions apart; the model then ignored the image
  (the same report loss with the film's codes as with another film's).
- The released response-only loss: with the whole-paragraph loss most of the gradient goes to
  modelling codes and the template, and the conditional report tokens learn slower.
- VQA in stage 1 as well as stage 2 (as LLM-CXR), 2 questions per stage-2 film: at 10 epochs,
  CXR-to-report micro AUROC was 0.73-0.76 with them, 0.74 with 1 per film and 0.64 with none
  in stage 1 (the yes/no answers are a dense signal of which findings a film shows). `epochs`
  counts passes over the report and film examples only, so the questions share those steps.
- 15 epochs (1,431 steps): 10 epochs gave CXR-to-report 0.73-0.76 over five runs, too close
  to the demo's 0.75 bar; 15 gave 0.77, with stage 1 ~7.5 minutes on 2 cores.
- Logits only at the loss-masked positions (`loss.max_loss_fraction`): about a third of the
  positions carry a target; the output projection and softmax of the rest was ~12% of a step.
"""

import os

import ml_collections

from llmcxr_jax.configs import load_config_file


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    args = set(arg.split(",")) if arg else set()
    c = load_config_file(os.path.join(os.path.dirname(__file__), "llmcxr_stage1.py"))
    c.model = "demo"
    # the preset's shape, spelled out so a run can change it (--config.model_overrides.x=y)
    c.model_overrides = ml_collections.ConfigDict(
        {
            "dtype": "float32",
            "hidden_size": 128,
            "num_layers": 4,
            "num_heads": 4,
            "intermediate_size": 512,
            "rotary_pct": 1.0,
            "attention_block": 64,  # skip the attention blocks above the causal diagonal
        }
    )
    c.tokenizer.path = ""
    c.tokenizer.vocab_size = 1024
    c.tokenizer.num_image_codes = 256
    c.data.builder = "cxr_phantoms"
    c.data.builder_config = "64"
    c.data.num_codes = 64
    c.data.num_image_codes = 256
    c.data.max_len = 256
    c.data.batch_size = 16
    c.data.num_threads = 2
    c.data.input_shards = 0  # input streams; 0: one per host (see data/pipeline.py)
    c.data.seed = 0
    c.data.mask_mode = "response"
    c.data.vqa = "synthesize"  # in both stages
    c.data.vqa_per_image = 2  # synthesised questions per stage-2 film
    c.loss.max_loss_fraction = 0.45  # buffer for the loss positions (20-35% of them carry one)
    c.optim.lr = 2e-3
    c.optim.min_lr = 1e-4
    c.optim.warmup = "linear"
    c.optim.warmup_steps = 30
    c.optim.decay = "cosine"
    c.optim.clip = 1.0
    c.optim.weight_decay = 0.01
    c.mesh = (1, 1, 1)
    c.epochs = 15
    c.log_every = 10
    c.eval_every = 200
    c.eval_batches = 4
    c.sample_every = 0
    c.ckpt_every = 200
    c.seed = 0
    if "stage2" in args:
        c.data.stage = 2
        c.epochs = 1
        c.optim.warmup_steps = 10
        c.optim.lr = 1e-3
    if "test" in args:
        c.model_overrides.update({"dtype": "float32"})
        c.tokenizer.vocab_size = 400
        c.data.max_len = 256
        c.data.batch_size = 4
        c.steps = 20
        c.log_every = 1
        c.eval_every = 10
        c.eval_batches = 2
        c.ckpt_every = 5
        c.tensorboard = False
    return c
