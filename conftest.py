"""pytest set-up shared by tests/ and the nbval run over chapters/*.ipynb.

The test suite runs every chapter in the small CI profile. ``ddpm_lib.profile`` is the one place
that reads the variable; here we only set it, before any kernel starts, so notebook kernels
inherit it. Run ``DDPM_PROFILE=full pytest chapters`` to execute the chapters at full size.
"""

import os

os.environ.setdefault("DDPM_PROFILE", "ci")

# DDPM_BOOK_CACHE=<folder>: nbval's chapter runs also fill the book's jupyter-cache (tools/book_cache.py)
pytest_plugins = ["tools.book_cache"]
