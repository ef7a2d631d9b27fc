"""Mentions of a chapter ("chapter 07", "chapters 06 and 08") in the course's prose, and links for them.

Every mention of another chapter in a chapter's Markdown cells and in the Markdown documents is a link to that
chapter's source, so that a renumbering breaks the book's warnings-as-errors build instead of leaving a wrong
number in the text (``tests/test_prose.py`` finds unlinked mentions). Code (cells, fences, inline code) and math are
not prose and are left alone.

    python tools/chapter_links.py           # list the unlinked mentions
    python tools/chapter_links.py --write   # turn them into links
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ROOT / "chapters"
#: the Markdown documents whose prose mentions chapters (their links are relative to the repository root)
DOCUMENTS = ("README.md", "intro.md", "instructors.md", "notation.md", "try_it.md", "grading.md",
             "engineering_notes.md")  # fmt: skip
#: what is not prose inside a Markdown line: links, inline code, math
PROTECTED = re.compile(r"\[[^\]]*\]\([^)]*\)|`[^`]*`|\$\$.*?\$\$|\$[^$]*\$")
#: "chapter 07", "Chapters 06 and 08", "chapters 04–10", "chapters 04, 05 and 10"
NUMBER = r"\d\d(?!\d)"
MENTION = re.compile(
    rf"\b([Cc]hapters?)((?:\s+{NUMBER})(?:(?:,\s*|\s*[–-]\s*|\s+and\s+|\s+or\s+|\s+to\s+){NUMBER})*)"
)


def chapter_files() -> dict[str, str]:
    """Chapter number ("07") -> its source's file name ("07_evaluation.py")."""
    return {path.name[:2]: path.name for path in sorted(CHAPTERS.glob("[0-9][0-9]_*.py"))}


def prose_lines(path: Path) -> list[tuple[int, str, str]]:
    """(line index, prefix, text) of every prose line of ``path``: a chapter's Markdown cells (prefix ``# ``) or a
    Markdown document outside code fences (prefix empty)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, markdown, fence = [], path.suffix == ".md", False
    for index, line in enumerate(lines):
        if path.suffix == ".py":
            if line.startswith("# %%"):
                markdown, fence = "[markdown]" in line, False
                continue
            if not markdown or not (line.startswith("# ") or line == "#"):
                continue
            prefix, text = "# ", line[2:]
        else:
            prefix, text = "", line
        if text.lstrip().startswith(("```", "~~~")):
            fence = not fence
            continue
        if fence or text.lstrip().startswith(":::{"):  # code, and directive lines (exercise titles)
            continue
        found.append((index, prefix, text))
    return found


def _unprotected(text: str):
    """The spans of ``text`` outside links, inline code and math: (start, end)."""
    position = 0
    for match in PROTECTED.finditer(text):
        yield position, match.start()
        position = match.end()
    yield position, len(text)


def unlinked(text: str) -> list[str]:
    """The mentions of a chapter by number in ``text`` that are not links."""
    return [m.group(0) for start, end in _unprotected(text) for m in MENTION.finditer(text[start:end])]


def link(text: str, files: dict[str, str], base: str) -> str:
    """``text`` with every unlinked mention's numbers made links to ``base + files[number]``."""

    def replace(match: re.Match) -> str:
        word, numbers = match.group(1), match.group(2)
        if len(re.findall(NUMBER, numbers)) == 1:
            number = re.search(NUMBER, numbers).group(0)
            return f"[{word} {number}]({base}{files[number]})" if number in files else match.group(0)
        return word + re.sub(NUMBER, lambda n: f"[{n.group(0)}]({base}{files[n.group(0)]})"
                             if n.group(0) in files else n.group(0), numbers)  # fmt: skip

    pieces, position = [], 0
    for start, end in _unprotected(text):
        pieces.append(text[position:start])
        pieces.append(MENTION.sub(replace, text[start:end]))
        position = end
    pieces.append(text[position:])
    return "".join(pieces)


def sources() -> list[Path]:
    return sorted(CHAPTERS.glob("[0-9][0-9]_*.py")) + [
        ROOT / name for name in DOCUMENTS if (ROOT / name).is_file()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="turn the unlinked mentions into links")
    args = parser.parse_args(argv)
    files, count = chapter_files(), 0
    for path in sources():
        base = "" if path.parent == CHAPTERS else "chapters/"
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        for index, prefix, text in prose_lines(path):
            mentions = unlinked(text)
            if not mentions:
                continue
            count += len(mentions)
            if args.write:
                ending = lines[index][len(lines[index].rstrip("\r\n")) :]
                lines[index] = prefix + link(text, files, base) + ending
            else:
                print(f"{path.relative_to(ROOT)}:{index + 1}: {', '.join(mentions)}")
        if args.write:
            path.write_text("".join(lines), encoding="utf-8")
    print(f"{count} unlinked mention(s)" + (" linked" if args.write else ""))
    return 0 if args.write or count == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
