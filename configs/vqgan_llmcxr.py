"""VQ-GAN for LLM-CXR: taming's f16 model, 1024 codes, 256x256 chest X-rays.

LLM-CXR released no VQ-GAN training config; this follows taming's f16 settings (Adam 4.5e-6 x
batch, betas 0.5/0.9, discriminator from step 10k with weight 0.8, hinge loss, LPIPS weight 1)
and adds the clinical-information-preserving loss on torchxrayvision DenseNet-121 features.
Weights you supply (nothing is downloaded):
  --config.loss.perceptual_taming_ckpt=PATH   any taming VQ-GAN .ckpt (holds LPIPS weights), or
  --config.loss.perceptual_vgg=VGG16.pth --config.loss.perceptual_lin=vgg.pth
  --config.classifier.xrv_state_dict=PATH     torchxrayvision densenet121-res224-all state dict
  --config.init.taming_ckpt=... --config.init.taming_config=...   to finetune a taming model

    llmcxr-jax train-vqgan --config configs/vqgan_llmcxr.py \\
        --config.data.source=folder:/data/mimic-cxr-jpg/files --workdir gs://bucket/vqgan
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = "llmcxr-f16"  # models/vqgan.py PRESETS
    c.model_overrides = ml_collections.ConfigDict()
    c.init = ml_collections.ConfigDict({"checkpoint": "", "taming_ckpt": "", "taming_config": ""})
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.source = "folder:/path/to/mimic-cxr-jpg/files"  # or synthetic:N
    c.data.batch_size = 32
    c.data.seed = 0
    c.data.num_threads = 16
    c.data.allow_upscale = False
    c.data.cache_in_memory = False  # keep served images in memory (small data sets only)

    c.loss = ml_collections.ConfigDict()
    c.loss.l1_weight = 1.0
    c.loss.perceptual_weight = 1.0
    c.loss.perceptual_taming_ckpt = ""
    c.loss.perceptual_vgg = ""
    c.loss.perceptual_lin = ""
    c.loss.codebook_weight = 1.0
    c.loss.code_restart_below = 0.0  # > 0: re-seed rarely used codes (train/vqgan_step.py)
    c.loss.disc_start = 10_000
    c.loss.disc_weight = 0.8
    c.loss.disc_factor = 1.0
    c.loss.disc_loss = "hinge"
    c.loss.disc_layers = 3
    c.loss.disc_ndf = 64
    c.loss.clinical_weight = 1.0
    c.loss.clinical_features = ("pooled",)  # densenet.DenseNet.features keys

    c.classifier = ml_collections.ConfigDict()
    c.classifier.checkpoint = ""  # our DenseNet checkpoint
    c.classifier.xrv_state_dict = ""  # torchxrayvision state dict
    c.classifier.preset = "densenet121-xrv"  # for training one when no weights are given
    c.classifier.train_steps = 5_000
    c.classifier.batch_size = 32
    c.classifier.lr = 1e-4

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 4.5e-6 * c.data.batch_size  # taming scales its base rate by the batch
    c.optim.disc_lr = 4.5e-6 * c.data.batch_size
    c.optim.b1 = 0.5
    c.optim.b2 = 0.9

    c.mesh = (-1, 1, 1)  # data parallel over every device
    c.steps = 200_000
    c.log_every = 50
    c.sample_every = 2_000
    c.ckpt_every = 2_000
    c.keep_checkpoints = 3
    c.tensorboard = True
    return c
