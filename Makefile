# `make test` and `make demo` work on a fresh machine: they create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# 8 fake CPU devices: multi-device behaviour (meshes, sharding) is tested without accelerators.
TEST_ENV := XLA_FLAGS="--xla_force_host_platform_device_count=8" JAX_PLATFORMS=cpu
# Two pytest workers (pytest-xdist), whole test files per worker, so both of CI's cores work.
PYTEST_WORKERS ?= 2
PYTEST_ARGS ?=

.PHONY: install test demo lint browser bench-decode bench-generate bench-vqgan bench-vqgan-train bench-pipeline bench-train-step bench-accelerator clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,port,tb,tfds]'
	$(PY) -m pip install --quiet --no-deps taming-transformers-rom1504==0.0.6
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	JAX_PLATFORMS=cpu $(VENV)/bin/llmcxr-jax demo --out demo-out

test: lint browser
	$(TEST_ENV) $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile tests $(PYTEST_ARGS)

# The browser tests (tests/test_serve.py) drive Debian's Chromium. Installed here where we are
# root with apt-get; elsewhere (or if apt-get fails) those tests skip, saying why.
browser:
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
		>/dev/null; } || echo "make test: no /usr/bin/chromium: the browser tests will skip"

lint: $(STAMP)
	$(VENV)/bin/ruff check llmcxr_jax tests benchmarks configs scripts
	$(VENV)/bin/ruff format --check llmcxr_jax tests benchmarks configs scripts

bench-decode: $(STAMP)
	JAX_PLATFORMS=cpu $(PY) benchmarks/decode.py

bench-generate: $(STAMP)
	JAX_PLATFORMS=cpu $(PY) benchmarks/generate.py

bench-vqgan: $(STAMP)
	JAX_PLATFORMS=cpu $(PY) benchmarks/vqgan.py

bench-vqgan-train: $(STAMP)
	JAX_PLATFORMS=cpu $(PY) benchmarks/vqgan_train.py

bench-pipeline: $(STAMP)
	JAX_PLATFORMS=cpu $(PY) benchmarks/pipeline.py

bench-train-step: $(STAMP)
	JAX_PLATFORMS=cpu $(PY) benchmarks/train_step.py

# On a GPU or TPU (not pinned to the CPU): the real-size train step (MFU) and decoding
bench-accelerator: $(STAMP)
	$(PY) benchmarks/accelerator.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
