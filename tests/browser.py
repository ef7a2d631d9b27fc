"""What the Playwright tests (tests/test_try_it.py, tests/test_jupyterlab.py) share: Debian's Chromium,
driven through ``executable_path`` (Playwright's own browser download does not work offline), started
with the flags that keep it off this machine's closed network."""

import shutil

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]  # fmt: skip
