"""The learner's JupyterLab, in headless Chromium: what a learner sees after following the README.

Playwright (its Python package, driving Debian's Chromium through ``executable_path``; its own browser
download does not work offline) starts JupyterLab on a copy of the chapters, double-clicks a chapter's
``.py`` in the file browser, opens its ``.ipynb``, clears the outputs, runs all cells and checks:

- the ``.py`` opened as a notebook (the course's JupyterLab defaults, ``jupyter/``);
- every cell ran, with no error output;
- each exercise box is drawn as a box by jupyterlab-myst: no literal ``:::`` or ``{exercise}`` text;
- every solution cell and every check cell is folded, so neither a solution nor a hidden check is on
  screen, while the checks' outputs ("Exercise 1.1 passed") are;
- no nbgrader menu, "Validate" button or "Create Assignment" panel, and no news pop-up.

The tests themselves run in the instructor's environment (``requirements-instructor.txt``: nbgrader
grades chapter 01 in ``tests/test_exercises.py``). A learner's environment has no nbgrader at all
(``tests/test_exercises.py`` checks that ``requirements.txt`` brings none); to show the JupyterLab a
learner gets, this test switches nbgrader's extensions off in its own Jupyter configuration folder, as if
it were not installed. Screenshots go to ``_build/screenshots/jupyterlab-*.png``.
``REQUIRE_BROWSER_TEST=1`` (set by ``.ci/run``) turns a missing Chromium or Playwright into a failure.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
from browser import CHROMIUM, FLAGS

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "_build" / "screenshots"
REQUIRED = os.environ.get("REQUIRE_BROWSER_TEST") == "1"
CHAPTER = "01_noise_schedule"
COURSE_SETTINGS = Path(sysconfig.get_path("data")) / "share/jupyter/lab/settings/overrides.d/ddpm-course.json"
NBGRADER_SERVER_EXTENSIONS = [
    "nbgrader",
    "nbgrader.server_extensions.assignment_list",
    "nbgrader.server_extensions.course_list",
    "nbgrader.server_extensions.formgrader",
    "nbgrader.server_extensions.validate_assignment",
]

pytestmark = pytest.mark.slow


def skip_or_fail(reason: str):
    if REQUIRED:
        pytest.fail(f"{reason} (REQUIRE_BROWSER_TEST=1)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Base URL of a JupyterLab serving a copy of the chapters, configured as a learner's."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        skip_or_fail("playwright is not installed (pip install -r requirements.txt)")
    if CHROMIUM is None:
        skip_or_fail("chromium is not installed (Debian: apt-get install chromium)")
    if not COURSE_SETTINGS.is_file():
        skip_or_fail(
            f"the course's JupyterLab settings are not installed ({COURSE_SETTINGS}): pip install ./jupyter"
        )
    base = tmp_path_factory.mktemp("lab")
    chapters = base / "chapters"
    chapters.mkdir()
    for suffix in (".py", ".ipynb"):
        shutil.copy(ROOT / "chapters" / f"{CHAPTER}{suffix}", chapters)
    config = base / "config"
    (config / "labconfig").mkdir(parents=True)
    # A learner's environment: nbgrader not there (see the module docstring).
    (config / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyter/nbgrader": True}}), encoding="utf-8"
    )
    (config / "jupyter_server_config.json").write_text(
        json.dumps({"ServerApp": {"jpserver_extensions": dict.fromkeys(NBGRADER_SERVER_EXTENSIONS, False)}}),
        encoding="utf-8",
    )
    env = dict(
        os.environ,
        DDPM_PROFILE="ci",
        JUPYTER_CONFIG_DIR=str(config),
        JUPYTERLAB_SETTINGS_DIR=str(base / "user-settings"),  # a first start: no settings of anyone's
        JUPYTERLAB_WORKSPACES_DIR=str(base / "workspaces"),
        JUPYTER_RUNTIME_DIR=str(base / "runtime"),
    )
    port = free_port()
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}",
               f"--ServerApp.root_dir={chapters}", "--IdentityProvider.token=", "--ServerApp.password=",
               "--LabApp.expose_app_in_browser=True"]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    log = (base / "server.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=chapters)
    try:
        for _ in range(120):
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited: {(base / 'server.log').read_text()[-3000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


CURRENT = "window.jupyterapp.shell.currentWidget"

RUN_STATE = f"""(() => {{
  const panel = {CURRENT};
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const code = panel.content.widgets.filter((cell) => cell.model.type === "code");
  return {{
    pending: code.filter((cell) => !cell.model.executionCount).length,
    cells: code.length,
    kernel: kernel ? kernel.status : "none",
  }};
}})()"""

# Every cell as the learner sees it. JupyterLab draws only the cells near the viewport, so the probe
# scrolls each one into view and waits for JupyterLab to draw it (and jupyterlab-myst its directives, which
# it draws a moment later) before reading its text.
CELLS = f"""(async () => {{
  const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const cells = [];
  for (const cell of {CURRENT}.content.widgets) {{
    cell.node.scrollIntoView();
    for (let wait = 0; wait < 40 && cell.model.type === "markdown" && !cell.rendered; wait++) await pause(50);
    // jupyterlab-myst draws a directive after the cell counts as rendered: give it up to 5 s to replace the text
    const directive = cell.model.type === "markdown" && cell.model.sharedModel.getSource().includes(":::");
    for (let wait = 0; wait < 100 && directive && cell.node.innerText.includes(":::"); wait++) await pause(50);
    await pause(30);
    const jupyter = cell.model.getMetadata("jupyter") || {{}};
    const outputs = cell.model.type === "code" ? cell.model.outputs.toJSON() : [];
    cells.push({{
      type: cell.model.type,
      first_line: cell.model.sharedModel.getSource().split("\\n")[0],
      folded_in_source: jupyter.source_hidden === true,
      input_hidden: cell.inputHidden,
      source_box: cell.model.sharedModel.getSource().includes(":::{{exercise}}") ? "{{exercise}}" : "",
      rendered: cell.model.type === "markdown" ? cell.rendered : null,
      boxed: cell.node.querySelectorAll("aside, .admonition").length,
      errors: outputs.filter((o) => o.output_type === "error").map((o) => o.ename + ": " + o.evalue),
      text: cell.node.innerText,
    }});
  }}
  return cells;
}})()"""


def test_a_learner_opens_a_chapter_runs_it_and_sees_boxes_and_folded_solutions(lab):
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=FLAGS,
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{lab}/lab", wait_until="domcontentloaded")
            page.wait_for_selector(".jp-DirListing-item", timeout=120_000)

            # 1. The .py, double-clicked, opens as a notebook.
            page.locator(".jp-DirListing-item", has_text=f"{CHAPTER}.py").first.dblclick()
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=60_000)
            opened = page.evaluate(f"[{CURRENT}.context.path, {CURRENT}.hasClass('jp-NotebookPanel')]")
            assert opened == [f"{CHAPTER}.py", True], f"double-clicking {CHAPTER}.py opened {opened}"
            page.screenshot(path=str(SCREENSHOTS / "jupyterlab-py-opens-as-notebook.png"))

            # 2. The .ipynb: clear the stored outputs, run every cell, wait for the kernel.
            page.locator(".jp-DirListing-item", has_text=f"{CHAPTER}.ipynb").first.dblclick()
            page.wait_for_function(
                f"{CURRENT} && {CURRENT}.context && {CURRENT}.context.path === '{CHAPTER}.ipynb'"
                f" && {CURRENT}.content.widgets.length > 0",
                timeout=60_000,
            )
            page.wait_for_function(
                f"{CURRENT}.sessionContext.session && {CURRENT}.sessionContext.session.kernel"
                f" && {CURRENT}.sessionContext.session.kernel.status === 'idle'",
                timeout=120_000,
            )
            page.evaluate("window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs')")
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            deadline = time.monotonic() + 600
            state = page.evaluate(RUN_STATE)
            while state["pending"] or state["kernel"] != "idle":
                assert time.monotonic() < deadline, f"the chapter did not finish running: {state}"
                time.sleep(1)
                state = page.evaluate(RUN_STATE)
            cells = page.evaluate(CELLS)

            # 3. What the learner sees.
            errors = [(index, cell["errors"]) for index, cell in enumerate(cells) if cell["errors"]]
            assert not errors, f"cells with an error output: {errors}"
            markdown = "\n".join(cell["text"] for cell in cells if cell["type"] == "markdown")
            assert ":::" not in markdown and "{exercise}" not in markdown, "MyST markup shown as text"
            assert "Reading the SNR backwards" in markdown
            assert all(cell["rendered"] for cell in cells if cell["type"] == "markdown")
            boxes = sum(cell["boxed"] for cell in cells if "{exercise}" in cell["source_box"])
            assert boxes >= 3, f"{boxes} exercise boxes drawn as boxes (chapter 01 has three exercises)"
            checks = [cell for cell in cells if cell["first_line"].startswith("# Check ")]
            solutions = [cell for cell in cells if "### BEGIN SOLUTION" in cell.get("text", "")]
            assert len(checks) == 3 and not solutions, "a solution's source is on screen"
            folded = [cell for cell in cells if cell["folded_in_source"]]
            assert len(folded) == 6 and all(cell["input_hidden"] for cell in folded), folded
            screen = page.evaluate(f"{CURRENT}.content.node.innerText")
            for secret in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS", "return snr / (1 + snr)"):
                assert secret not in screen, f"{secret!r} is on the learner's screen"
            assert all("passed" in cell["text"] for cell in checks), "a check's output is not shown"

            # 4. No grading tools, no first-run noise.
            menus = page.locator(".lm-MenuBar-itemLabel").all_inner_texts()
            assert "Nbgrader" not in menus, menus
            assert page.get_by_text("Create Assignment").count() == 0
            assert page.locator(".jp-Toolbar", has_text="Validate").count() == 0
            assert page.get_by_text("official Jupyter news").count() == 0

            page.evaluate(
                f"{CURRENT}.content.widgets.find((cell) => cell.node.innerText.includes('Reading the SNR'))"
                ".node.scrollIntoView()"
            )
            time.sleep(1)
            page.screenshot(path=str(SCREENSHOTS / "jupyterlab-exercise-box-folded-solution.png"))
        finally:
            browser.close()
