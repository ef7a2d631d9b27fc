"""Guards on the course's prose, so that renumbering, re-executing or re-shipping cannot leave it wrong quietly.

- every mention of a chapter by number, in a chapter's Markdown and in the Markdown documents, is a link to that
  chapter's source (``tools/chapter_links.py``), and a link's number is its target's: a renumbering then breaks the
  book's warnings-as-errors build or this test instead of leaving a wrong number in the text;
- every test the prose cites by name exists;
- every time the prose gives for a cell ("the next cell takes about 8 minutes") or for a chapter ("about 9 minutes
  for the chapter") agrees with the chapter's stored record (``tools/execute_chapters.py``: the wall time of the
  full-profile run and of each code cell, cache hits counted at the time they saved) within 25%, and every cell
  that ran for over 30 s printed its time.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import chapter_links  # noqa: E402

CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.py"))
TOLERANCE = 0.25


def test_every_mention_of_a_chapter_is_a_link():
    unlinked = [f"{path.relative_to(ROOT)}:{index + 1}: {', '.join(found)}"
                for path in chapter_links.sources() for index, _, text in chapter_links.prose_lines(path)
                if (found := chapter_links.unlinked(text))]  # fmt: skip
    assert not unlinked, "link these (python tools/chapter_links.py --write):\n" + "\n".join(unlinked)


def test_a_link_to_a_chapter_carries_its_number():
    files = chapter_links.chapter_files()
    wrong = []
    for path in chapter_links.sources():
        for index, _, text in chapter_links.prose_lines(path):
            for label, target in re.findall(
                r"\[([^\]]*)\]\((?:chapters/)?(\d\d_\w+\.(?:py|ipynb))(?:#[^)]*)?\)", text
            ):
                numbers = re.findall(r"\b\d\d\b", label)
                if target[:2] not in files or files[target[:2]] != target.replace(".ipynb", ".py"):
                    wrong.append(f"{path.relative_to(ROOT)}:{index + 1}: no chapter file {target}")
                elif numbers and numbers != [target[:2]]:
                    wrong.append(f"{path.relative_to(ROOT)}:{index + 1}: [{label}] links to {target}")
    assert not wrong, "\n".join(wrong)


def test_the_link_finder_finds_what_it_should():
    files = {"06": "06_sampling.py", "08": "08_fast_sampling.py"}
    assert chapter_links.unlinked("as chapter 06 showed, and chapters 06 and 08") == [
        "chapter 06",
        "chapters 06 and 08",
    ]
    linked = chapter_links.link("chapters 06 and 08; `chapter 06`; $chapter 08$", files, "")
    assert linked == "chapters [06](06_sampling.py) and [08](08_fast_sampling.py); `chapter 06`; $chapter 08$"
    assert chapter_links.unlinked(linked) == []


def cited_tests() -> list[tuple[str, str, str]]:
    """(where, test file, test name) for every test the prose and the chapters' comments cite by name: written
    ``tests/test_x.py::test_y``, ``test_x.py::test_y``, or ``::test_y`` after a citation of the same file."""
    found = []
    for path in [*CHAPTERS, *(ROOT / name for name in chapter_links.DOCUMENTS if (ROOT / name).is_file())]:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            last = None
            for file, name in re.findall(r"(?:tests/)?(test_\w+\.py)?::(test_\w+)", line):
                file = file or last
                if file is None:
                    continue
                last = file
                found.append((f"{path.relative_to(ROOT)}:{number}", file, name))
    return found


def test_every_test_the_prose_cites_exists():
    citations = cited_tests()
    assert len(citations) > 20  # the finder finds them
    missing = []
    for where, file, name in citations:
        path = ROOT / "tests" / file
        names = {node.name for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                 if isinstance(node, ast.FunctionDef)} if path.is_file() else set()  # fmt: skip
        if name not in names:
            missing.append(f"{where}: tests/{file}::{name}")
    assert not missing, "cited tests that do not exist:\n" + "\n".join(missing)


# --- times ---------------------------------------------------------------------------------------------------

WORDS = {"a": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
         "nine": 9, "ten": 10, "twelve": 12, "half a": 0.5}  # fmt: skip
AMOUNT = r"(\d+(?:\.\d+)?|half a|an?|one|two|three|four|five|six|seven|eight|nine|ten|twelve)"
#: a duration: "8 minutes", "4 to 6 minutes", "a minute and a half", "half a minute", "40 s", "1.5 min"
DURATION = re.compile(
    rf"\b{AMOUNT}(?:\s*(?:to|–|-)\s*{AMOUNT})?(?:\s+|(?<=\d))(minutes?|min|seconds?|s)\b(\s+and\s+a\s+half)?",
    re.I,
)
#: what a sentence gives a time for
NEXT_CELLS = re.compile(r"\bthe next (?:(two|three|four) )?cells?\b", re.I)
FOR_CHAPTER = re.compile(r"\bfor the chapter\b|\bthe chapter takes\b", re.I)


def seconds_of(match: re.Match) -> tuple[float, float]:
    """(low, high) seconds of a DURATION match."""
    low_text, high_text, unit, half = match.groups()

    def number(text: str) -> float:
        text = text.lower()
        return float(text) if text[0].isdigit() else WORDS.get(text, 1)

    scale = 1 if unit.lower().startswith("s") else 60
    low = number(low_text) + (0.5 if half else 0)
    high = number(high_text) + (0.5 if half else 0) if high_text else low
    return low * scale, high * scale


def sentences(text: str) -> list[str]:
    return [part for part in re.split(r"(?<=[.;:!?])\s+(?=[A-Z(])", " ".join(text.split())) if part]


def time_claims(notebook: nbformat.NotebookNode) -> list[tuple[str, str, float, float, float]]:
    """(what, sentence, low s, high s, measured s) for every time the chapter's Markdown gives for the next
    cell(s) or for the whole chapter, with what the stored record measured."""
    record = notebook.metadata["ddpm_course"]
    seconds = record["cell_seconds"]
    code_index = -1
    claims = []
    for cell in notebook.cells:
        if cell.cell_type == "code":
            code_index += 1
            continue
        if cell.cell_type != "markdown":
            continue
        for sentence in sentences(cell.source):
            durations = list(DURATION.finditer(sentence))
            if not durations:
                continue
            cells = NEXT_CELLS.search(sentence)
            if cells:
                count = {"two": 2, "three": 3, "four": 4}.get((cells.group(1) or "").lower(), 1)
                measured = sum(seconds[code_index + 1 : code_index + 1 + count])
                what = f"the next {count} cell(s) after code cell {code_index}"
            elif FOR_CHAPTER.search(sentence):
                measured, what = record["wall_time_s"], "the chapter"
            else:
                continue
            low, high = seconds_of(durations[0])
            claims.append((what, sentence, low, high, measured))
    return claims


@functools.cache
def stale_reasons(source: Path) -> tuple[str, ...]:
    """Why ``source``'s stored outputs are stale, once per chapter and process (both time tests ask)."""
    import execute_chapters

    record = execute_chapters.stored_record(source)
    return (
        tuple(execute_chapters.stale_reasons(source, record["profile"])) if record else ("no stored outputs",)
    )


def skip_if_stale(notebook: Path) -> None:
    """A stale chapter's stored times are an earlier run's: its prose is held to them once it is re-executed (landing
    does not wait for that; publishing does: ``python tools/execute_chapters.py --check``)."""
    source = notebook.with_suffix(".py")
    reasons = stale_reasons(source)
    if reasons:
        pytest.skip(
            f"{source.name} is stale ({reasons[0][:80]}): python tools/execute_chapters.py {source.name[:2]}"
        )


def chapter_notebooks() -> list[Path]:
    return [path.with_suffix(".ipynb") for path in CHAPTERS]


@pytest.mark.parametrize("notebook", chapter_notebooks(), ids=lambda path: path.stem[:2])
def test_every_time_the_prose_gives_agrees_with_the_stored_run(notebook):
    nb = nbformat.read(notebook, as_version=4)
    skip_if_stale(notebook)
    if "cell_seconds" not in nb.metadata.get("ddpm_course", {}):
        pytest.fail(
            f"{notebook.name} has no per-cell times: re-execute it (python tools/execute_chapters.py)"
        )
    wrong = [f"{what}: the prose says {low:.0f}-{high:.0f} s, the stored run took {measured:.0f} s: {sentence!r}"
             for what, sentence, low, high, measured in time_claims(nb)
             if not low * (1 - TOLERANCE) <= measured <= high * (1 + TOLERANCE)]  # fmt: skip
    assert not wrong, "\n".join(wrong)
    assert not any("TIME?" in cell.source for cell in nb.cells), "a TIME? placeholder is left in the prose"


@pytest.mark.parametrize("notebook", chapter_notebooks(), ids=lambda path: path.stem[:2])
def test_a_cell_that_runs_over_30_seconds_prints_its_time(notebook):
    nb = nbformat.read(notebook, as_version=4)
    skip_if_stale(notebook)
    seconds = nb.metadata.get("ddpm_course", {}).get("cell_seconds")
    if seconds is None:
        pytest.fail(
            f"{notebook.name} has no per-cell times: re-execute it (python tools/execute_chapters.py)"
        )
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    silent = []
    for index, (cell, took) in enumerate(zip(code, seconds, strict=True)):
        printed = "".join(output.get("text", "") for output in cell.outputs)
        if took > 30 and not re.search(r"\d(?:\.\d+)?\s*(?:s|min|minutes|seconds)\b", printed):
            silent.append(f"code cell {index} ({took:.0f} s): {cell.source.strip().splitlines()[0][:60]}")
    assert not silent, "cells over 30 s that print no time:\n" + "\n".join(silent)


def test_the_time_finder_reads_the_courses_phrasings():
    text = ("In the full profile the next cell takes about 8 minutes on a 2-core CPU. "
            "The next two cells take 4 to 6 minutes. About 9 minutes for the chapter on two CPU cores.")  # fmt: skip
    found = [(seconds_of(DURATION.search(s)), bool(NEXT_CELLS.search(s)), bool(FOR_CHAPTER.search(s)))
             for s in sentences(text)]  # fmt: skip
    assert found == [((480, 480), True, False), ((240, 360), True, False), ((540, 540), False, True)]
    assert seconds_of(DURATION.search("a minute and a half")) == (90, 90)
    assert seconds_of(DURATION.search("half a minute")) == (30, 30)
    assert seconds_of(DURATION.search("40s")) == (40, 40)
    assert DURATION.search("the ones as they are") is None  # "one" + "s" is not a duration


def test_the_readme_quotes_the_recorded_try_it_times():
    """README's Try-it paragraph gives the training times that ddpm_lib/results/time_to_digits.json records."""
    import json

    records = json.loads((ROOT / "ddpm_lib" / "results" / "time_to_digits.json").read_text(encoding="utf-8"))
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    quoted = re.search(r"\((\d+) and (\d+) s of training", readme)
    assert quoted, "the Try-it paragraph quotes no recorded training times"
    recorded = [records[name]["rows"][0]["train_s"] for name in ("quick", "quick-float32")]
    assert [int(quoted.group(1)), int(quoted.group(2))] == [round(seconds) for seconds in recorded]
    minutes = [
        float(m)
        for m in re.findall(r"trains in about (\d+) minutes|in\s+about (\d+) minutes too", readme)[0]
        if m
    ]
    minutes += [float(m) for m in re.findall(r"about (\d+) minutes too", readme)]
    for said, seconds in zip(minutes, recorded, strict=True):
        assert abs(said * 60 - seconds) <= TOLERANCE * seconds, (said, seconds)


def test_the_recorded_time_to_digits_runs_meet_the_bar_in_time():
    """Both quick recipes met the bar; the float32 one in at most six minutes of training on a CPU without
    bfloat16 (simulated), as the README and chapter 11 say."""
    import json

    records = json.loads((ROOT / "ddpm_lib" / "results" / "time_to_digits.json").read_text(encoding="utf-8"))
    assert {"quick", "quick-float32"} <= set(records)
    for name, record in records.items():
        row = record["rows"][0]
        assert row["name"] == name and row["bar_met"] and record["command"].count("time_to_digits.py") == 1
    float32 = records["quick-float32"]
    assert not float32["machine"]["native_bf16"] and float32["machine"]["cpu_capability"] == "AVX2"
    assert float32["rows"][0]["train_s"] <= 6 * 60
