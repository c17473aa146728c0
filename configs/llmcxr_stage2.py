"""LLM-CXR stage 2: from stage 1's parameters with a fresh optimizer, PA/AP views only, the
earliest study per patient, IMPRESSION only; otherwise stage 1's settings.

    llmcxr-jax train --config configs/llmcxr_stage2.py --workdir gs://b/stage2 \\
        --config.init.params_from=gs://b/stage1 --config.tokenizer.path=gs://b/stage1/tokenizer ...
"""

import os

import ml_collections

from llmcxr_jax.configs import load_config_file


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    c = load_config_file(os.path.join(os.path.dirname(__file__), "llmcxr_stage1.py"))
    c.data.stage = 2
    c.init.checkpoint = ""
    c.init.params_from = ""  # the stage-1 workdir (its model/) or a model checkpoint
    c.init.image_embeddings = ""  # not applied with params_from: stage 1 trained the rows
    return c
