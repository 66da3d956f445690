"""Fixtures shared by the test folders, and the XLA settings of the test run."""

import os

# The tests' programs are tiny: XLA's CPU backend spends most of each test compiling them, and
# its LLVM optimisations cost more than they save at these sizes (-O0, one process, load 0.8:
# tests/layers + tests/models/test_models_transformer.py 287 s -> 245 s; the compile-bound
# tests/ops/test_ops_bad_inputs.py 61 s -> 29 s of CPU). Set before jax is imported anywhere, and
# inherited by the tests' subprocesses; experiments and benchmarks keep XLA's defaults.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_backend_optimization_level=0").strip()

import fcntl  # noqa: E402

import matplotlib.image  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def check_png(path, min_width: int = 200, min_height: int = 150) -> np.ndarray:
  """Asserts that ``path`` is a figure with something drawn on it, not merely a file: at least
  ``min_width x min_height`` pixels, over 2% of them off the background colour, and many
  colours (text, lines, colour maps); returns the RGB pixels."""
  image = matplotlib.image.imread(path)
  height, width = image.shape[:2]
  assert width >= min_width and height >= min_height, (path, image.shape)
  rgb = np.round(image[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
  colours, counts = np.unique(rgb, axis=0, return_counts=True)
  drawn = 1 - counts.max() / counts.sum()
  assert drawn > 0.02, f"{path}: {drawn:.1%} of the pixels are off the background"
  assert len(colours) >= 16, f"{path}: only {len(colours)} colours"
  return rgb


@pytest.fixture(name="check_png")
def check_png_fixture():
  return check_png


@pytest.fixture
def umask_022():
  """The common umask while the test runs, so file modes are what most users get."""
  old = os.umask(0o022)
  try:
    yield
  finally:
    os.umask(old)


@pytest.fixture(scope="session")
def dates_small_data_dir(tmp_path_factory):
  """A TFDS data dir holding ``dates_translation/small``, prepared once per test run and shared
  by the xdist workers (a file lock; seconds of Babel per preparation). Tests that need the data,
  not its preparation, read it here (or copy it before changing it); the tests of preparation
  itself (tests/data/test_data_dates.py's second build, the stamps' rebuild) still build their own.
  """
  from attention_jax.data import dates  # pylint: disable=import-outside-toplevel
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent  # the run's folder, shared by its workers; not by other runs
  data_dir = base / "shared_tfds_dates_small"
  with open(base / "shared_tfds_dates_small.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      dates.load_dates("test", data_dir=str(data_dir), config="small")
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  return data_dir
