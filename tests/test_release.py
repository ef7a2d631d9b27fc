"""The version is written once (ddpm_lib.__version__) and every place that states it agrees."""

import re
from pathlib import Path

import yaml

import ddpm_lib

ROOT = Path(__file__).resolve().parents[1]


def test_citation_changelog_and_package_state_one_version():
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert citation["version"] == ddpm_lib.__version__
    assert (
        citation["license"] == "MIT" and (ROOT / "LICENSE").is_file() and (ROOT / "LICENSE-TEXT.md").is_file()
    )
    first_entry = re.search(r"^## (\S+) — (.+)$", (ROOT / "CHANGELOG.md").read_text(encoding="utf-8"), re.M)
    assert first_entry and first_entry.group(1) == ddpm_lib.__version__
    # released or not, both say the same: an unreleased version has no release date in CITATION.cff
    released = first_entry.group(2).strip()
    if released == "unreleased":
        assert "date-released" not in citation
    else:
        assert str(citation.get("date-released")) == released


def test_the_command_line_prints_the_version(capsys):
    import pytest

    from ddpm_lib.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert (
        exit_.value.code == 0
        and capsys.readouterr().out.strip() == f"python -m ddpm_lib {ddpm_lib.__version__}"
    )


def test_every_chapter_installs_the_course_where_it_is_missing():
    """The first code cell of every chapter installs ddpm_lib from the repository that book.yml names (the launch
    buttons' repository) when it cannot be imported — on Colab, which has torch but not the course."""
    import jupytext

    from ddpm_lib.course import chapter_sources

    repository = yaml.safe_load((ROOT / "book.yml").read_text(encoding="utf-8"))["repository"]["url"]
    for source in chapter_sources():
        first = next(cell for cell in jupytext.read(source).cells if cell.cell_type == "code")
        assert 'if importlib.util.find_spec("ddpm_lib") is None:' in first.source, source.name
        assert f'"ddpm_lib @ git+{repository}"' in first.source, f"{source.name}: not book.yml's repository"
        assert "#| export" not in first.source and "default_exp" not in first.source, source.name
