"""``ddpm_lib.fingerprint``: which code counts as changed, and what a process records it ran."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ddpm_lib import fingerprint

ROOT = Path(__file__).resolve().parents[1]

MODULE = '''
"""A module."""
import math

RATE = 0.5


class Model:
    """A class."""

    size: int = 3

    def forward(self, x):
        """Forward."""
        return x * RATE  # a comment

    @property
    def name(self):
        return "model"

    @name.setter
    def name(self, value):
        self._name = value


def train(steps, lr=1e-3):
    def step(x):
        return x - lr

    return [step(s) for s in range(steps)]
'''


def fingerprints(tmp_path: Path, text: str) -> tuple[dict[str, str], str]:
    path = tmp_path / "module.py"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return fingerprint.function_fingerprints(path), fingerprint.skeleton_fingerprint(path)


def test_every_function_and_method_by_qualified_name(tmp_path):
    functions, _ = fingerprints(tmp_path, MODULE)
    assert set(functions) == {"Model.forward", "Model.name", "train"}  # train.<locals>.step belongs to train


@pytest.mark.parametrize(
    "edit",
    [
        ('"""Forward."""', '"""Forward the input, scaled."""'),  # a docstring
        ("# a comment", "# another comment"),
        ("return x * RATE", "return (x *\n                RATE)"),  # formatting
        ('"""A module."""', '"""A module, described at length."""'),
    ],
    ids=["docstring", "comment", "formatting", "module docstring"],
)
def test_docstrings_comments_and_formatting_change_nothing(tmp_path, edit):
    before = fingerprints(tmp_path, MODULE)
    assert fingerprints(tmp_path, MODULE.replace(*edit)) == before


def test_a_body_edit_changes_that_function_only(tmp_path):
    (functions, skeleton) = fingerprints(tmp_path, MODULE)
    (edited, edited_skeleton) = fingerprints(tmp_path, MODULE.replace("return x - lr", "return x - 2 * lr"))
    assert edited_skeleton == skeleton  # bodies are not part of the skeleton
    assert {name for name in functions if edited[name] != functions[name]} == {
        "train"
    }  # nested step is train's


@pytest.mark.parametrize(
    "edit",
    [
        ("lr=1e-3", "lr=1e-2"),  # a default
        ("def train(steps,", "def train(steps, seed=0,"),  # a signature
        ("RATE = 0.5", "RATE = 0.25"),  # a module-level assignment
        ("size: int = 3", "size: int = 4"),  # a class body (a dataclass field)
        ("import math", "import math, os"),
        ("    @property\n", "    @staticmethod\n    @property\n"),  # a decorator
    ],
    ids=["default", "signature", "assignment", "class body", "import", "decorator"],
)
def test_the_skeleton_sees_what_every_user_of_the_module_depends_on(tmp_path, edit):
    assert edit[0] in MODULE
    _, skeleton = fingerprints(tmp_path, MODULE)
    functions_after, skeleton_after = fingerprints(tmp_path, MODULE.replace(*edit))
    assert skeleton_after != skeleton


def test_a_changed_default_changes_the_function_too(tmp_path):
    functions, _ = fingerprints(tmp_path, MODULE)
    edited, _ = fingerprints(tmp_path, MODULE.replace("lr=1e-3", "lr=1e-2"))
    assert edited["train"] != functions["train"] and edited["Model.forward"] == functions["Model.forward"]


def test_code_objects_belong_to_the_function_that_holds_them():
    defined = {"Model.forward", "train"}
    assert fingerprint.owner("train.<locals>.step", defined) == "train"
    assert fingerprint.owner("train.<locals>.<listcomp>", defined) == "train"
    assert fingerprint.owner("Model.forward", defined) == "Model.forward"
    assert fingerprint.owner("Model", defined) is None  # class body: the skeleton's
    assert fingerprint.owner("<module>", defined) is None


def test_changes_names_what_changed(tmp_path, monkeypatch):
    package = tmp_path / "ddpm_lib"
    package.mkdir()
    (package / "module.py").write_text(MODULE, encoding="utf-8")
    (package / "weights.json").write_text("{}", encoding="utf-8")
    ran = fingerprint.Dependencies(
        {"ddpm_lib/module.py": {"train"}}, {"ddpm_lib/module.py"}, {"ddpm_lib/weights.json"}
    )
    recorded = ran.fingerprints(tmp_path)
    assert fingerprint.changes(recorded, tmp_path) == {"functions": [], "skeletons": [], "data": []}
    (package / "module.py").write_text(MODULE.replace("return x * RATE", "return x"), encoding="utf-8")
    assert fingerprint.changes(recorded, tmp_path) == {
        "functions": [],
        "skeletons": [],
        "data": [],
    }  # not run
    (package / "module.py").write_text(MODULE.replace("return x - lr", "return x + lr"), encoding="utf-8")
    assert fingerprint.changes(recorded, tmp_path)["functions"] == ["ddpm_lib/module.py:train"]
    (package / "weights.json").write_text("{} ", encoding="utf-8")
    assert fingerprint.changes(recorded, tmp_path)["data"] == ["ddpm_lib/weights.json"]
    (package / "module.py").unlink()
    found = fingerprint.changes(recorded, tmp_path)
    assert found["functions"] == ["ddpm_lib/module.py:train"] and found["skeletons"] == ["ddpm_lib/module.py"]


@pytest.mark.slow
def test_a_process_records_the_package_code_it_ran_and_the_weights_it_opened(tmp_path):
    """What tools/execute_chapters.py relies on: a Python process started with DDPM_RECORD_DIR and
    tools/recording first on its path writes, at exit, the package functions it called, the package modules it
    imported and the package data files it opened; nothing else, and nothing of the recorder itself."""
    code = (
        "from ddpm_lib.pretrained import provenance\n"
        "from ddpm_lib.schedule import LinearBetaScheduler\n"
        "provenance('ddpm_mnist_cond')\n"
        "LinearBetaScheduler(10)\n"
        f"open({str(tmp_path / 'elsewhere.txt')!r}, 'w').close()\n"
    )
    env = {"PYTHONPATH": f"{ROOT / 'tools' / 'recording'}:{ROOT}", fingerprint.RECORD_DIR_ENV: str(tmp_path),
           "PATH": "/usr/bin:/bin"}  # fmt: skip
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=tmp_path)
    records = list(tmp_path.glob("*.json"))
    assert len(records) == 1
    found = json.loads(records[0].read_text())
    assert found["data"] == ["ddpm_lib/weights/ddpm_mnist_cond.json"]
    assert "provenance" in found["functions"]["ddpm_lib/pretrained.py"]
    assert {"LinearBetaScheduler.__init__", "NoiseSchedule.__init__"} <= set(
        found["functions"]["ddpm_lib/schedule.py"]
    )
    assert "ddpm_lib/fingerprint.py" not in found["modules"] and "ddpm_lib/pretrained.py" in found["modules"]
    assert all(module.startswith("ddpm_lib/") for module in [*found["modules"], *found["functions"]])


def test_without_the_variable_the_site_hook_records_nothing(tmp_path):
    env = {"PYTHONPATH": f"{ROOT / 'tools' / 'recording'}:{ROOT}", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", "import sys; print('ddpm_lib.fingerprint' in sys.modules)"],
        env=env, capture_output=True, text=True, check=True, cwd=tmp_path,
    )  # fmt: skip
    assert result.stdout.strip() == "False"
