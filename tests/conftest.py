"""Test setup: 8 fake CPU devices (set before JAX initialises) and tiny random GPT-NeoX models."""

import logging
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a hub

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "multihost: several local JAX processes as hosts (select with -m multihost)"
    )
    config.addinivalue_line("markers", "browser: drives the app in headless Chromium")


def pytest_sessionstart(session):
    assert jax.device_count() == 8, f"expected 8 fake CPU devices, got {jax.devices()}"


def tiny_hf_model(
    *,
    vocab_size=211,
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    intermediate_size=96,
    rotary_pct=0.25,
    parallel=True,
    seed=0,
    act="gelu",
    max_positions=256,
):
    """A random transformers GPT-NeoX whose biases and norms are random too (not 0/1), so every
    parameter is exercised by a comparison."""
    import torch
    import transformers

    cfg = transformers.GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        rotary_pct=rotary_pct,
        use_parallel_residual=parallel,
        hidden_act=act,
        max_position_embeddings=max_positions,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = transformers.GPTNeoXForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name or "layer_norm" in name:
                p.copy_(
                    1.0 + 0.1 * torch.randn_like(p)
                    if name.endswith("weight")
                    else 0.1 * torch.randn_like(p)
                )
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))
    return model


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def library_log(caplog):
    """The library's log messages since the last call, read and cleared (as capsys reads)."""
    caplog.set_level(logging.INFO, logger="llmcxr_jax")

    def read() -> str:
        text = caplog.text
        caplog.clear()
        return text

    return read
