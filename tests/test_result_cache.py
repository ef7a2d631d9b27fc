"""``ddpm_lib.result_cache``: a kept result stands in for a computation exactly while nothing it depends on changed."""

import json
import linecache
import random
import sys
import time
import types

import numpy as np
import pytest
import torch

from ddpm_lib import fingerprint, result_cache
from ddpm_lib.generation import generate
from ddpm_lib.result_cache import cached
from ddpm_lib.unet import Unet


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(result_cache.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(result_cache.LOG_ENV, str(tmp_path / "notes.log"))
    monkeypatch.setattr(result_cache, "_cache", None)
    for name in ("perf_counter", "monotonic", "time"):  # a hit moves the clocks on: put them back afterwards
        monkeypatch.setattr(time, name, getattr(time, name))
    monkeypatch.setattr(result_cache, "_clocks_patched", False)
    monkeypatch.setattr(result_cache, "_replayed", 0.0)
    return result_cache.active()


def notes(tmp_path) -> list[str]:
    log = tmp_path / "notes.log"
    return log.read_text().splitlines() if log.exists() else []


def tiny_model() -> Unet:
    torch.manual_seed(0)
    return Unet(base_dim=8, dim_mults=[2], time_embedding_dim=16)


def test_without_the_variable_a_call_just_computes(monkeypatch):
    monkeypatch.delenv(result_cache.CACHE_ENV, raising=False)
    calls = []
    assert cached("x", lambda a: calls.append(a) or a * 2, 3) == 6
    assert cached("x", lambda a: calls.append(a) or a * 2, 3) == 6
    assert calls == [3, 3] and result_cache.active() is None


def test_a_hit_gives_what_the_computation_gave(cache, capsys):
    def compute(n, scale):
        print(f"computing {n}")
        return {"tensor": torch.arange(n) * scale, "array": np.linspace(0, 1, n), "scalar": np.float64(0.5),
                "numbers": [1, 2.5, None, "a"], "pair": (1, 2), "set": {3, 4}, "__odd": 1}  # fmt: skip

    first = cached("compute", compute, 4, scale=2)
    assert capsys.readouterr().out == "computing 4\n"
    second = cached("compute", compute, 4, scale=2)
    assert capsys.readouterr().out == "computing 4\n"  # printed again, from the cache
    assert (cache.hits, cache.misses) == (1, 1)
    assert torch.equal(first["tensor"], second["tensor"]) and np.array_equal(first["array"], second["array"])
    assert type(second["array"]) is np.ndarray and second["array"].dtype == np.float64
    assert type(second["scalar"]) is np.float64 and second["scalar"] == 0.5
    assert second["numbers"] == [1, 2.5, None, "a"] and second["pair"] == (1, 2) and second["set"] == {3, 4}
    assert second["__odd"] == 1
    cached("compute", compute, 5, scale=2)  # other arguments: another entry
    assert cache.misses == 2


def test_samples_are_cached_by_the_network_the_sampler_and_the_seed(cache):
    model = tiny_model().eval()
    from ddpm_lib.schedule import LinearBetaScheduler

    scheduler = LinearBetaScheduler(50)
    first = generate(model, scheduler, 3, sampler="ddim", steps=5, seed=1)
    assert torch.equal(generate(model, scheduler, 3, sampler="ddim", steps=5, seed=1), first)
    assert (cache.hits, cache.misses) == (1, 1)
    generate(model, scheduler, 3, sampler="ddim", steps=5, seed=2)  # another seed
    generate(model, scheduler, 3, sampler="ddim", steps=4, seed=1)  # another sampler setting
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)  # another network
    changed = generate(model, scheduler, 3, sampler="ddim", steps=5, seed=1)
    assert (cache.hits, cache.misses) == (1, 4) and not torch.equal(changed, first)
    entry = json.loads(next((cache.folder / "generate").glob("*/entry.json")).read_text())
    assert "ddim_step" in entry["ran"]["functions"]["ddpm_lib/fast_sampling.py"]
    assert "ddpm_lib/generation.py" in entry["fingerprints"]["skeletons"]


def test_a_change_to_code_the_computation_ran_makes_it_compute_again(cache, monkeypatch):
    model = tiny_model().eval()
    from ddpm_lib.schedule import LinearBetaScheduler

    scheduler = LinearBetaScheduler(50)
    generate(model, scheduler, 2, sampler="ddim", steps=3)
    real = fingerprint.function_fingerprints

    def edited(path):  # as if ddim_step's body had been edited
        found = real(path)
        if path.name == "fast_sampling.py":
            found["ddim_step"] = "0" * fingerprint.DIGEST_CHARS
        return found

    monkeypatch.setattr(fingerprint, "function_fingerprints", edited)
    generate(model, scheduler, 2, sampler="ddim", steps=3)
    assert (cache.hits, cache.misses) == (0, 2)
    generate(model, scheduler, 2, sampler="ddim", steps=3)  # the entry was replaced: a hit again
    assert cache.hits == 1
    monkeypatch.setattr(fingerprint, "function_fingerprints", real)


def notebook_function(source: str, name: str, namespace: dict):
    """Define ``name`` as a notebook cell would: compiled from a cell IPython keeps in linecache."""
    filename = f"/nonexistent/ipykernel_0/{abs(hash(source))}.py"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    exec(compile(source, filename, "exec"), namespace)
    return namespace[name]


def test_notebook_functions_and_the_globals_they_read_are_part_of_the_record(cache, monkeypatch):
    main = types.ModuleType("__main__")
    monkeypatch.setitem(sys.modules, "__main__", main)
    namespace = vars(main)
    namespace["offset"] = torch.tensor(1.0)
    notebook_function("def step(x):\n    return x + offset\n", "step", namespace)
    run = notebook_function("def run(n):\n    return [step(i) for i in range(n)]\n", "run", namespace)
    cached("run", run, 3)
    cached("run", run, 3)
    assert (cache.hits, cache.misses) == (1, 1)
    namespace["offset"] = torch.tensor(2.0)  # a global the notebook's function reads
    assert cached("run", run, 3)[0] == 2.0 and cache.misses == 2
    notebook_function("def step(x):\n    return x - offset\n", "step", namespace)  # the cell edited
    assert cached("run", run, 3)[0] == -2.0 and cache.misses == 3
    assert cached("run", run, 3)[0] == -2.0 and cache.hits == 2


def test_a_hit_leaves_the_global_random_state_and_the_clocks_as_the_computation_did(cache):
    def draws():
        time.sleep(0.2)
        return torch.rand(2)

    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    first = cached("draws", draws)
    after = torch.rand(1), np.random.rand(), random.random()
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    started = time.perf_counter()
    assert torch.equal(cached("draws", draws), first)
    assert time.perf_counter() - started >= 0.2  # the clock moved on by the computation's time
    assert cache.hits == 1 and result_cache.replayed_seconds() >= 0.2
    assert (torch.rand(1), np.random.rand(), random.random()) == after
    torch.manual_seed(1)  # another starting state: the result would differ, so it is computed again
    cached("draws", draws)
    assert cache.misses == 2


def test_corrupt_and_foreign_entries_are_ignored_with_a_note(cache, tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return torch.ones(3)

    cached("c", compute)
    folder = next((cache.folder / "c").iterdir())
    (folder / "result.pt").write_bytes(b"not a tensor file")
    assert torch.equal(cached("c", compute), torch.ones(3)) and len(calls) == 2
    assert len(notes(tmp_path)) == 1 and "corrupt" in notes(tmp_path)[0]
    entry = json.loads((folder / "entry.json").read_text())
    entry["format"] = 99
    (folder / "entry.json").write_text(json.dumps(entry))
    cached("c", compute)
    assert len(calls) == 3 and "made elsewhere" in notes(tmp_path)[1]
    (folder / "entry.json").write_text("{")
    cached("c", compute)
    assert len(calls) == 4 and "unreadable" in notes(tmp_path)[2]
    cached("c", compute)
    assert len(calls) == 4  # the entry written last is good


def test_a_result_that_cannot_be_stored_is_computed_and_noted(cache, tmp_path):
    assert cached("object", lambda: object) is object
    assert cached("object", lambda: object) is object
    assert cache.hits == 0 and "not cached" in notes(tmp_path)[0]


def test_nested_hits_count_towards_the_outer_computation(cache):
    """An outer computation that reuses an inner kept result still depends on the code the inner one ran."""
    model = tiny_model().eval()
    from ddpm_lib.schedule import LinearBetaScheduler

    scheduler = LinearBetaScheduler(50)
    generate(model, scheduler, 2, sampler="ddim", steps=3)  # kept

    def outer():
        return generate(model, scheduler, 2, sampler="ddim", steps=3).mean()

    cached("outer", outer)
    entry = json.loads(next((cache.folder / "outer").glob("*/entry.json")).read_text())
    assert "ddim_step" in entry["ran"]["functions"]["ddpm_lib/fast_sampling.py"]


def test_what_a_computation_ran_is_recorded_after_another_profiler_took_the_thread(cache):
    """A thread has one profiler at a time: after another one ran (or ``sys.setprofile(None)``), the process's
    recorder takes the thread back, so a computation still records the package functions it ran."""
    import cProfile

    model = tiny_model().eval()
    from ddpm_lib.schedule import LinearBetaScheduler

    scheduler = LinearBetaScheduler(50)
    generate(model, scheduler, 2, sampler="ddim", steps=2)  # the recorder is running
    other = cProfile.Profile()
    other.enable()
    other.disable()  # leaves the thread with no profiler at all
    assert sys.getprofile() is None
    cached("after", lambda: generate(model, scheduler, 2, sampler="ddim", steps=3).mean())
    entry = json.loads(next((cache.folder / "after").glob("*/entry.json")).read_text())
    assert "ddim_step" in entry["ran"]["functions"]["ddpm_lib/fast_sampling.py"]
