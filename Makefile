# Two commands do everything: `make demo` and `make test`. Each builds ./.venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-full reverse-demo test test-all bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# The main job: seq2seq with and without attention, a short run that still shows both curves.
demo: $(STAMP)
	$(PY) -m experiments.seq2seq --config=experiments/configs/seq2seq.py:quick --workdir=runs/seq2seq_quick

# The default config (about 10 minutes of training per model on a 2-core CPU).
demo-full: $(STAMP)
	$(PY) -m experiments.seq2seq --config=experiments/configs/seq2seq.py --workdir=runs/seq2seq

# A few seconds: one self-attention layer learns to reverse a sequence.
reverse-demo: $(STAMP)
	$(PY) -m experiments.demo --workdir=runs/demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

test-all: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m ""

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]" || echo "PyTorch not installed: its column stays empty"
	$(PY) -m benchmarks.attention

clean:
	rm -rf $(VENV) runs *.egg-info
