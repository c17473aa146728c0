"""A small VQ-GAN that trains in minutes on a CPU: 64x64 images, f8, 64 codes per image.

The LLM-CXR recipe (configs/vqgan_llmcxr.py) with a small model, synthetic data and a classifier
trained on the data set's labels for the clinical loss. No weights needed: the perceptual loss
is off unless LPIPS weights are given. The `demo-f8` model is grey (one input and output
channel; its discriminator too): it takes the channel mean of the RGB-replicated films and
decodes [H, W, 1]. (LLM-CXR's `llmcxr-f16` stays RGB, for its released weights.)

    llmcxr-jax train-vqgan --config configs/vqgan_demo.py --workdir /tmp/vqgan-demo
Arg `test` shrinks it to what the test suite runs (32x32, a few dozen steps).
"""

import os

import ml_collections

from llmcxr_jax.configs import load_config_file


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    c = load_config_file(os.path.join(os.path.dirname(__file__), "vqgan_llmcxr.py"))
    c.model = "demo-f8"
    c.data.source = "synthetic:2048"
    c.data.batch_size = 16
    c.data.num_threads = 2
    c.data.cache_in_memory = True  # render each phantom once for the classifier and the VQ-GAN
    c.loss.perceptual_weight = 0.0
    c.loss.disc_start = 300
    c.loss.disc_ndf = 32
    c.loss.clinical_features = ("pooled", "block2")
    c.classifier.preset = "tiny"
    c.classifier.train_steps = 150
    c.classifier.batch_size = 16
    c.classifier.lr = 1e-3
    c.optim.lr = 2e-4
    c.optim.disc_lr = 2e-4
    c.mesh = (1, 1, 1)
    c.steps = 600
    c.log_every = 25
    c.sample_every = 200
    c.ckpt_every = 200
    if arg == "test":
        c.model = "tiny"  # RGB (3 channels)
        c.data.source = "synthetic:256"
        c.data.batch_size = 8
        c.loss.disc_start = 20
        c.loss.disc_ndf = 16
        c.loss.disc_layers = 2
        c.classifier.train_steps = 20
        c.classifier.batch_size = 8
        c.steps = 40
        c.log_every = 10
        c.sample_every = 0
        c.ckpt_every = 10
        c.tensorboard = False
    return c
