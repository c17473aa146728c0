"""A small prepared phantom data set with codes, for LM training tests (built once per session)."""

from pathlib import Path

import tensorflow_datasets as tfds
from flax import nnx

import llmcxr_jax.data.tfds  # noqa: F401  (registers the builders)
from llmcxr_jax import encode
from llmcxr_jax.data.image_sources import make_source
from llmcxr_jax.models.vqgan import VQGAN, get_preset

SIZES = {"train_size": 60, "validate_size": 12, "test_size": 12}


def prepare(root: Path) -> Path:
    """cxr_phantoms/64 with codes of a random demo VQ-GAN; returns the TFDS data dir."""
    data_dir = root / "tfds"
    b = tfds.builder("cxr_phantoms/64", data_dir=str(data_dir), file_format="array_record", **SIZES)
    n = b.split_ranges()["test"].stop
    vq = VQGAN(get_preset("demo-f8"), rngs=nnx.Rngs(0))
    encode.encode_dataset(vq, make_source(f"phantoms:{n}", 64), root / "codes", progress=False)
    b = tfds.builder(
        "cxr_phantoms/64",
        data_dir=str(data_dir),
        file_format="array_record",
        codes_dir=str(root / "codes"),
        **SIZES,
    )
    b.download_and_prepare()
    return data_dir
