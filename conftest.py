"""pytest set-up shared by tests/ and the chapter runs over chapters/*.ipynb.

The test suite runs every chapter in the small CI profile. ``ddpm_lib.profile`` is the one place
that reads the variable; here we only set it, before any kernel starts, so notebook kernels
inherit it. Run ``DDPM_PROFILE=full pytest chapters`` to execute the chapters at full size.
"""

import os

import pytest

os.environ.setdefault("DDPM_PROFILE", "ci")

# pyproject.toml runs the tests in two worker processes (pytest-xdist, one test file per worker at a time).
# Each worker, and every kernel and subprocess it starts, uses one thread: two multi-threaded torch
# processes on two cores spin-wait for each other, while two single-threaded ones share them well.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = "1"

# nbval (--nbval-lax --nbval-current-env in pyproject.toml) runs chapters/NN_topic.ipynb once each, a test
# item per code cell; tools/chapter_run.py adds, at every exercise, the student copy's stub and check (its
# items are marked slow). Tests of tests/ that take over ~3 s on 2 cores carry @pytest.mark.slow, so
# `python -m pytest -m "not slow"` runs the unit tests alone in about a minute.
# DDPM_BOOK_CACHE=<folder>: those executions also fill the book's jupyter-cache (tools/book_cache.py).
pytest_plugins = ["tools.chapter_run", "tools.book_cache"]


@pytest.fixture
def debian_fashion_mnist():
    """The folder of Debian's dataset-fashion-mnist package (the real files, offline). A test that uses it is skipped
    without them, and fails under REQUIRE_FASHION_MNIST=1, which .ci/run sets after installing the package."""
    from ddpm_lib.data import FASHION_DEFAULT_ROOTS

    folder = FASHION_DEFAULT_ROOTS[-1]
    if not (folder / "train-images-idx3-ubyte.gz").is_file():
        if os.environ.get("REQUIRE_FASHION_MNIST") == "1":
            pytest.fail(f"no Fashion-MNIST under {folder} (REQUIRE_FASHION_MNIST=1)")
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    return folder
