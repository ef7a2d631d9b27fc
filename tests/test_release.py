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
    first_entry = re.search(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(encoding="utf-8"), re.M)
    assert first_entry and first_entry.group(1) == ddpm_lib.__version__


def test_the_command_line_prints_the_version(capsys):
    import pytest

    from ddpm_lib.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert (
        exit_.value.code == 0
        and capsys.readouterr().out.strip() == f"python -m ddpm_lib {ddpm_lib.__version__}"
    )
