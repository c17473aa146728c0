"""A wheel of the repository, installed outside the source tree, runs `llmcxr-jax demo`.

The wheel is built offline from a copy of the sources (`pip wheel --no-build-isolation`), then
installed without dependencies into a fresh virtual environment in a temporary directory; the
dependencies come from this test's own environment through a `.pth` file (there is no network
at test time). That environment's editable install of llmcxr_jax is not activated there (its
`.pth` hooks run only in a site directory), so the code that runs is the wheel's: a module or
config file the wheel lacks fails the demo. The demo runs at the test sizes (`demo_run.py:test`,
about a minute and a half on 2 cores).
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("setup.py", "README.md", "llmcxr_jax", "configs")  # what a wheel is built from

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("setuptools") is None or importlib.util.find_spec("pip") is None,
    reason="building a wheel needs pip and setuptools in the test environment (no network)",
)


def _run(cmd, **kwargs):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert r.returncode == 0, f"{cmd} exited {r.returncode}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python, llmcxr-jax script, environment) of a fresh venv with the wheel installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=skip)
        else:
            shutil.copy2(ROOT / name, src / name)
    dist = tmp / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, src])
    (wheel,) = dist.glob("llmcxr_jax-*.whl")

    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    _run([*pip, "--python", python, "install", "--no-deps", "--no-index", wheel])
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(_run([python, "-c", purelib]).stdout.strip())
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "_llmcxr_test_dependencies.pth").write_text("".join(f"{p}\n" for p in ours))

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    env.update(JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", PYTHONNOUSERSITE="1")
    return env_dir, python, env_dir / "bin" / "llmcxr-jax", env


def test_the_wheel_not_the_source_tree_is_imported(installed, tmp_path):
    env_dir, python, script, env = installed
    code = (
        "import json, sys, llmcxr_jax, llmcxr_jax.demo as d\n"
        "print(json.dumps([llmcxr_jax.__file__, str(d.CONFIG_DIR), sys.path]))"
    )
    out = _run([python, "-c", code], cwd=tmp_path, env=env).stdout.splitlines()[-1]
    module, config_dir, path = json.loads(out)
    module, config_dir = Path(module), Path(config_dir)
    assert module.is_relative_to(env_dir), f"llmcxr_jax imported from {module}, not the wheel"
    assert config_dir.is_relative_to(env_dir) and (config_dir / "demo_run.py").is_file()
    assert not any(Path(p).resolve() == ROOT for p in path if p), path  # "": the cwd, tmp_path
    assert script.is_file()


def test_installed_wheel_runs_the_demo(installed, tmp_path):
    _, _, script, env = installed
    out = tmp_path / "demo-out"
    cmd = [script, "demo", "--out", out, "--config", "demo_run.py:test", "--no-progress"]
    _run(cmd, cwd=tmp_path, env=env, timeout=1500)
    assert (out / "summary.md").is_file()
    assert (out / "eval" / "results.json").is_file()
