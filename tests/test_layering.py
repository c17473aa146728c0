"""Layering: data code needs no accelerator stack, and nothing but the entry points imports the CLI.

Modules are read with `ast`, never imported. Every module under `llmcxr_jax/data/` must not
import jax, jaxlib, flax, optax, orbax or `llmcxr_jax.models`, neither itself nor through the
llmcxr_jax modules it imports (at any depth, lazy imports inside functions included), unless it
is on `DEVICE_MODULES`: modules whose job is arrays on devices, and whose docstring says so
(`DEVICE_REASON`). No module of `llmcxr_jax/` other than `cli.py` / `__main__.py` imports
`llmcxr_jax.cli`. The helpers are tested on bad examples first, so a broken check fails too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "llmcxr_jax"
FORBIDDEN_IN_DATA = ("jax", "jaxlib", "flax", "optax", "orbax", "llmcxr_jax.models")
# data modules allowed the accelerator stack: their job is arrays on devices
DEVICE_MODULES = ("llmcxr_jax.data.pipeline", "llmcxr_jax.data.image_batches")
DEVICE_REASON = "its job is arrays on devices"
CLI = "llmcxr_jax.cli"
CLI_ENTRY_POINTS = ("llmcxr_jax.cli", "llmcxr_jax.__main__")


# --- helpers --------------------------------------------------------------------------------


def _matches(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def imported_names(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Every module `source` imports, anywhere in it; `from a import b` gives `a` and `a.b`.

    Relative imports are resolved against `module` (a package's own name if `is_package`).
    """
    parts = module.split(".") if is_package else module.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = parts[: len(parts) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def forbidden_imports(
    source: str, module: str, forbidden: tuple[str, ...], *, is_package: bool = False
) -> list[str]:
    """The imports of `source` that are, or are inside, one of `forbidden`."""
    names = imported_names(source, module, is_package=is_package)
    return sorted(n for n in names if _matches(n, forbidden))


def states_device_reason(source: str) -> bool:
    """Whether the module docstring of `source` says why it may use jax."""
    doc = ast.get_docstring(ast.parse(source)) or ""
    return DEVICE_REASON in " ".join(doc.lower().split())


def violations(
    graph: dict[str, set[str]], roots: list[str], forbidden: tuple[str, ...]
) -> dict[str, list[str]]:
    """root -> the chains (`root -> ... -> forbidden import`) by which it reaches `forbidden`.

    `graph`: module -> the names it imports. A name in `graph` is followed (with the packages
    it lies in, whose `__init__` runs on import); any other name is a leaf.
    """
    out: dict[str, list[str]] = {}
    for root in roots:
        chains, seen, stack = [], {root}, [(root, [root])]
        while stack:
            mod, path = stack.pop()
            for name in sorted(graph.get(mod, ())):
                if _matches(name, forbidden):
                    chains.append(" -> ".join([*path, name]))
                    continue
                pieces = name.split(".")
                for k in range(1, len(pieces) + 1):
                    inner = ".".join(pieces[:k])
                    if inner in graph and inner not in seen:
                        seen.add(inner)
                        stack.append((inner, [*path, inner]))
        if chains:
            out[root] = sorted(chains)
    return out


def package_modules() -> dict[str, tuple[Path, bool]]:
    """Every module of llmcxr_jax: name -> (file, is a package's __init__)."""
    mods = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        mods[".".join(parts)] = (path, is_package)
    return mods


def import_graph() -> dict[str, set[str]]:
    return {
        name: imported_names(path.read_text(), name, is_package=is_package)
        for name, (path, is_package) in package_modules().items()
    }


# --- the helpers catch what they should -------------------------------------------------------


@pytest.mark.parametrize(
    "source, module",
    [
        ("import jax", "llmcxr_jax.data.x"),
        ("import jax.numpy as jnp", "llmcxr_jax.data.x"),
        ("from jax.sharding import Mesh", "llmcxr_jax.data.x"),
        ("from flax import nnx", "llmcxr_jax.data.x"),
        ("import optax", "llmcxr_jax.data.x"),
        ("import orbax.checkpoint as ocp", "llmcxr_jax.data.x"),
        ("import jaxlib", "llmcxr_jax.data.x"),
        ("from llmcxr_jax import models", "llmcxr_jax.data.x"),
        ("from llmcxr_jax.models.vqgan import VQGAN", "llmcxr_jax.data.x"),
        ("import llmcxr_jax.models.vqgan", "llmcxr_jax.data.x"),
        ("from ..models import vqgan", "llmcxr_jax.data.x"),
        ("from ... import models", "llmcxr_jax.data.tfds.x"),
        ("def f():\n    import jax\n", "llmcxr_jax.data.x"),
    ],
)
def test_forbidden_imports_are_found(source, module):
    assert forbidden_imports(source, module, FORBIDDEN_IN_DATA)


@pytest.mark.parametrize(
    "source",
    [
        "import numpy as np",
        "import jaxtyping",
        "from llmcxr_jax.data import images, labels",
        "from llmcxr_jax import sharding_helpers",
        "from . import codes",
        '"""Mentions jax and flax in words only."""',
    ],
)
def test_allowed_imports_pass(source):
    assert forbidden_imports(source, "llmcxr_jax.data.x", FORBIDDEN_IN_DATA) == []


@pytest.mark.parametrize(
    "source, module, is_package",
    [
        ("from llmcxr_jax import cli", "llmcxr_jax.demo", False),
        ("import llmcxr_jax.cli", "llmcxr_jax.demo", False),
        ("from llmcxr_jax.cli import main", "llmcxr_jax.train.lm", False),
        ("from . import cli", "llmcxr_jax.demo", False),
        ("from .cli import main", "llmcxr_jax", True),
        ("from .. import cli", "llmcxr_jax.eval.evaluate", False),
    ],
)
def test_cli_imports_are_found(source, module, is_package):
    assert forbidden_imports(source, module, (CLI,), is_package=is_package)


def test_client_is_not_cli():
    assert forbidden_imports("from llmcxr_jax import client", "llmcxr_jax.x", (CLI,)) == []


def test_device_reason_must_be_in_the_docstring():
    assert states_device_reason('"""Batches.\n\nIts job is arrays\non devices."""\nimport jax')
    assert not states_device_reason('"""Batches."""\n# its job is arrays on devices\nimport jax')
    assert not states_device_reason("import jax")


def test_indirect_imports_are_found():
    graph = {
        "llmcxr_jax.data.a": {"numpy", "llmcxr_jax.data.b"},
        "llmcxr_jax.data.b": {"llmcxr_jax.encode"},
        "llmcxr_jax.encode": {"jax", "llmcxr_jax.data.a"},  # a cycle is followed once
        "llmcxr_jax.data.c": {"llmcxr_jax.data.pkg.mod"},
        "llmcxr_jax.data.pkg": {"flax"},  # a package's __init__ runs on import
        "llmcxr_jax.data.pkg.mod": set(),
        "llmcxr_jax.data.d": {"numpy"},
    }
    got = violations(graph, sorted(graph), FORBIDDEN_IN_DATA)
    assert got["llmcxr_jax.data.a"] == [
        "llmcxr_jax.data.a -> llmcxr_jax.data.b -> llmcxr_jax.encode -> jax"
    ]
    assert got["llmcxr_jax.data.c"] == ["llmcxr_jax.data.c -> llmcxr_jax.data.pkg -> flax"]
    assert "llmcxr_jax.data.d" not in got and "llmcxr_jax.data.pkg.mod" not in got


# --- the repository -------------------------------------------------------------------------


def test_the_walk_sees_the_package():
    mods = package_modules()
    assert {"llmcxr_jax.data.labels", "llmcxr_jax.data.phantoms", CLI} <= set(mods)
    assert "llmcxr_jax.data.tfds.common" in mods


def test_data_modules_do_not_import_the_accelerator_stack():
    graph = import_graph()
    data = [m for m in graph if m == "llmcxr_jax.data" or m.startswith("llmcxr_jax.data.")]
    checked = [m for m in data if m not in DEVICE_MODULES]
    assert len(checked) > 10
    found = violations(graph, checked, FORBIDDEN_IN_DATA)
    assert not found, "data modules reaching jax/flax/optax/orbax/models:\n" + "\n".join(
        chain for chains in found.values() for chain in chains
    )


@pytest.mark.parametrize("module", DEVICE_MODULES)
def test_device_modules_say_why(module):
    path, _ = package_modules()[module]
    source = path.read_text()
    assert states_device_reason(source), f"{path}: its docstring must say '{DEVICE_REASON}'"
    # still needed: an entry that no longer imports jax must leave the list
    assert forbidden_imports(source, module, FORBIDDEN_IN_DATA), f"{module} no longer needs jax"


def test_only_the_entry_points_import_the_cli():
    offenders = {
        name: found
        for name, (path, is_package) in package_modules().items()
        if name not in CLI_ENTRY_POINTS
        and (found := forbidden_imports(path.read_text(), name, (CLI,), is_package=is_package))
    }
    assert not offenders, f"modules importing {CLI}: {offenders}"
