"""Ring attention over 4 devices computes sliding windows, packed sequences (segment ids) and
soft-capped logits exactly: values against float64 NumPy, gradients against the materialising
path; key blocks no query segment meets are never read.

One subprocess (``_ring_options_task.py``, 4 fake CPU devices) computes every case.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ring_options_task.py")
sys.path.insert(0, os.path.dirname(SCRIPT))

import _ring_options_task as task  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture(scope="module")
def errors(tmp_path_factory):
  out = tmp_path_factory.mktemp("ring") / "errors.npz"
  proc = subprocess.run([sys.executable, SCRIPT, str(out)], capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  with np.load(out) as data:
    return {k: data[k] for k in data.files}


@pytest.mark.parametrize("case", sorted(task.CASES))
@pytest.mark.parametrize("what", ["out", "dq", "dk", "dv"])
def test_ring_attention_options_match_the_references(errors, case, what):
  assert errors[f"{case}/{what}_scale"] > 0.1
  assert errors[f"{case}/{what}"] < 2e-5


def test_ring_attention_skips_key_blocks_no_segment_meets(errors):
  assert errors["skip/out_finite"]
  assert errors["skip/dq_finite"]


def test_ring_layer_with_window_softcap_and_segments_equals_the_default_layer(errors):
  assert errors["layer/ring_uses_ring"] and not errors["layer/None_uses_ring"]
  assert errors["layer/out_scale"] > 0.1
  assert errors["layer/out"] < 2e-5
