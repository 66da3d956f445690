# Two commands do everything: `make demo` and `make test`. Each builds ./.venv on first use, from
# requirements/lock.txt (exact versions and hashes): every machine gets the same environment.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The native CPU attention kernel: rebuilt in place when its source changes, without a new venv.
KERNEL := $(VENV)/.kernel
KERNEL_SOURCES := setup.py attention_jax/ops/cpu_kernels/flash_attention.cc
LOCK := requirements/lock.txt
UV := uv==0.13.9
PYTEST := -m pytest -q -n 2 --dist loadfile --durations=15

.PHONY: install demo demo-full reverse-demo test test-all test-latest lock reproduce bench bench-gpu clean

# A new lock rebuilds the venv from scratch, so nothing the old lock installed stays behind.
$(STAMP): $(LOCK) setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 11) <= v <= (3, 13) else \
	  f"$(PYTHON) is Python {v[0]}.{v[1]}; the lock covers 3.11-3.13: make PYTHON=python3.12 ...")'
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP) $(KERNEL)

$(KERNEL): $(STAMP) $(KERNEL_SOURCES)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(KERNEL)

install: $(KERNEL)

# The main job: seq2seq with and without attention, a short run that still shows both curves.
demo: $(KERNEL)
	$(PY) -m experiments.seq2seq --config=experiments/seq2seq/config.py:quick --workdir=runs/seq2seq_quick

# The default config (about 9 minutes in all on an idle 2-core CPU).
demo-full: $(KERNEL)
	$(PY) -m experiments.seq2seq --config=experiments/seq2seq/config.py --workdir=runs/seq2seq

# A few seconds: one self-attention layer learns to reverse a sequence.
reverse-demo: $(KERNEL)
	$(PY) -m experiments.demo --workdir=runs/demo

test: $(KERNEL)
	$(PY) $(PYTEST)

test-all: $(KERNEL)
	$(PY) $(PYTEST) -m ""

# Not in CI: the newest releases inside setup.cfg's ranges, to meet the next breaking release
# before a user does. Its own venv and TFDS data dir (datasets are stamped with their versions).
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/pip install --quiet --upgrade pip
	.venv-latest/bin/pip install --quiet --upgrade --upgrade-strategy eager -e ".[test]"
	mkdir -p runs && .venv-latest/bin/pip freeze --exclude-editable > runs/latest-environment.txt
	TFDS_DATA_DIR=$(CURDIR)/runs/tfds-latest .venv-latest/bin/python $(PYTEST)

# Regenerates the lock on purpose: newest releases within setup.cfg's ranges and
# requirements/constraints.txt, one version per package for Python 3.11-3.13, Linux and macOS.
lock:
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet $(UV)
	.venv-lock/bin/uv pip compile setup.cfg requirements/build.in --extra test --universal \
	  --python-version 3.11 --fork-strategy fewest -c requirements/constraints.txt \
	  --generate-hashes --custom-compile-command "make lock" -o $(LOCK)

# Long (about 1-2 hours on 2 cores), not in CI: re-runs every experiment whose table is in the
# README with its documented config and writes docs/reproduce.md, each figure beside the README's.
reproduce: $(KERNEL)
	$(PY) -m experiments.reproduce --workdir=runs/reproduce --report=docs/reproduce.md

bench: $(KERNEL)
	$(PY) -m pip install --quiet -e ".[bench]" || echo "PyTorch not installed: its column stays empty"
	$(PY) -m benchmarks.attention

# On a GPU/TPU machine whose venv has the accelerator jaxlib (e.g. pip install "jax[cuda12]==<the
# lock's jax>"): attention TFLOP/s against jax.nn (and PyTorch) and the LM gpu preset's MFU.
bench-gpu: $(KERNEL)
	$(PY) -m benchmarks.accelerator --out runs/accelerator

clean:
	rm -rf $(VENV) .venv-latest .venv-lock runs *.egg-info
