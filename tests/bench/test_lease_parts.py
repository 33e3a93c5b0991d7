"""The pieces of `flashtalk lease` that need no network: the golden subset that fits, the check of what comes
back from a lent GPU, and installing wheels where the Python has no pip."""

from __future__ import annotations

import importlib.util
import zipfile

import pytest

from flashtalk.bench import lease


def _golden(root):
    for family, name in lease.GOLDEN_ORDER:
        (root / family).mkdir(parents=True, exist_ok=True)
        (root / family / name).write_bytes(b"x" * 1000)
    for family in ("liveportrait", "joyvasa"):
        (root / family / "golden.json").write_text("{}")
        (root / family / "README.md").write_text("not carried")
    return root


def test_golden_subset_takes_the_most_important_files_that_fit(tmp_path):
    source, dest = _golden(tmp_path / "golden"), tmp_path / "subset"
    carried, left = lease.copy_golden(source, dest, room=3 * 1000 + 100)
    assert carried == [f"{f}/{n}" for f, n in lease.GOLDEN_ORDER[:3]]
    assert left == [f"{f}/{n}" for f, n in lease.GOLDEN_ORDER[3:]]
    assert (dest / "SUBSET").read_text().splitlines() == carried
    assert (dest / "joyvasa" / "golden.json").is_file() and not (dest / "joyvasa" / "README.md").exists()
    assert sorted(p.name for p in (dest / "liveportrait").iterdir()) == sorted(
        ["golden.json", "warping_module.npz", "grid_sample_5d.npz"]
    )


@pytest.mark.parametrize(
    "files, problem",
    [
        ([f"f{i}.txt" for i in range(8)], None),
        ([f"f{i}.txt" for i in range(9)], "9 files (at most 8 come back)"),
        (["a/b/ok.txt"], None),
        (["a/b/c/deep.txt"], "a/b/c/deep.txt: more than 2 folders deep"),
        (["sp ace.txt"], "sp ace.txt: a name with other characters"),
    ],
)
def test_check_results_names_what_would_not_come_back(tmp_path, files, problem):
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    assert lease.check_results(tmp_path) == ([problem] if problem else [])


def test_wheels_unpack_where_python_has_no_pip(tmp_path, monkeypatch):
    wheels, target = tmp_path / "whl", tmp_path / "site"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "probe_pkg-1.0-py3-none-any.whl", "w") as z:
        z.writestr("probe_pkg/__init__.py", "VALUE = 42\n")
        z.writestr("probe_pkg-1.0.dist-info/METADATA", "Name: probe_pkg\n")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pip" else real(name, *a))
    said = []
    lease._install(wheels, target, said.append)
    assert (target / "probe_pkg" / "__init__.py").read_text() == "VALUE = 42\n"
    assert said == [f"unpacked 1 wheels into {target} (this Python has no pip)"]


def test_run_without_wheels_is_one_line(tmp_path, capsys):
    assert lease.run(tmp_path, tmp_path / "out", budget_s=None, smoke=True, target=None, cases=[]) == 2
    assert "lease run: error: no wheels in" in capsys.readouterr().out
