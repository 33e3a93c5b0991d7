"""One call on a lent GPU gives the whole answer: `flashtalk lease prepare` here, `flashtalk lease run` there.

A lent GPU machine has its own software (Python 3.12, torch 2.11, triton 3.6, numpy 2.5, some OpenCV), no
package index, and only the working tree travels to it (64 MiB in all); at most 8 result files, at most 2
folders deep, come back. So:

* *prepare* (here, with the package index): the pinned binary wheels of what the image lacks
  (`lease_wheels.txt`, one list) into `.whl/`, the commit into `.whl/COMMIT`, the golden files the CUDA golden
  checks need (most important first, as many as fit) into `.golden/`, and the size of what travels against
  64 MiB;
* *run* (there, no index, no flashtalk installed: run from the tree's root): installs the wheels offline
  (`--no-index --no-deps --target`), writes a preflight (GPU, driver, versions, a C compiler and `Python.h`
  for Triton), runs `flashtalk bench --suite gpu` within the budget, and leaves at most 6 files in --out
  (results.json, summary.md, plots.png, preflight.txt, suite.log, rest.tar.gz), the summary table printed last;
  its exit status is the suite's (non-zero when anything failed).

Only the standard library is imported here: *run* starts before the carried wheels are installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from flashtalk.errors import FlashTalkError

MIB = 2**20
TRAVEL_LIMIT = 64 * MIB  # the working tree and everything carried, together
TRAVEL_MARGIN = 2 * MIB  # kept free for files made between prepare and the call (notes, a changed file)
MAX_RESULT_FILES = 8
WHEELS = ".whl"  # ignored folders (.gitignore) that travel by naming them in the call's `carry`
GOLDEN = ".golden"
COMMIT_FILE = "COMMIT"
SUBSET_FILE = "SUBSET"  # in the golden subset: which files were carried (the tests skip the others, saying so)
DEVICE_PYTHON = "3.12"
WHEEL_LIST = Path(__file__).with_name("lease_wheels.txt")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
PLATFORMS += ("manylinux_2_5_x86_64", "manylinux1_x86_64")
# The golden files of the CUDA golden checks, most important first: the warping network (the Triton warp
# kernels, the fused tail, the fast path), the 5-D grid sample, the motion transformer (attention), then the
# decoder and the encoders. Each family's small JSON files (golden.json, tolerances, manifest) always travel.
GOLDEN_ORDER = (
    ("liveportrait", "warping_module.npz"),
    ("liveportrait", "grid_sample_5d.npz"),
    ("joyvasa", "denoiser_forward.npz"),
    ("liveportrait", "spade_generator.npz"),
    ("liveportrait", "appearance_feature_extractor.npz"),
    ("liveportrait", "motion_extractor.npz"),
)
DEFAULT_BUDGET_S = 270.0  # the whole run: two tries (each with a machine start) fit a 15-minute lease
SMOKE_BUDGET_S = 240.0
PACK_RESERVE_S = 20.0


def _mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


def pinned_wheels() -> list[str]:
    """The `name==version` lines of the pinned list."""
    lines = (ln.split("#", 1)[0].strip() for ln in WHEEL_LIST.read_text().splitlines())
    return [ln for ln in lines if ln]


def _git(repo: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout if done.returncode == 0 else ""


def travelling_tree(repo: Path) -> int:
    """Bytes of the tracked files and the untracked files git does not ignore (what a call sends)."""
    listed = _git(repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    if not listed:
        raise FlashTalkError(f"{repo} is not a git checkout: prepare runs in the repository's root")
    files = (repo / p for p in dict.fromkeys(listed.split("\0")) if p)
    return sum(f.stat().st_size for f in files if f.is_file() and not f.is_symlink())


def _folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0


def fetch_wheels(folder: Path, python: str) -> None:
    """The pinned wheels for CPython `python` on manylinux x86_64 into `folder` (other .whl files removed, so
    one version of each travels)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.whl"):
        old.unlink()
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", python, "--implementation", "cp", "-d", str(folder)]
    cmd += [f"--platform={p}" for p in PLATFORMS] + ["-r", str(WHEEL_LIST)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["pip download failed"])[-1]
        raise FlashTalkError(f"fetching the wheels for Python {python} failed: {last}")
    got = len(list(folder.glob("*.whl")))
    if got != len(pinned_wheels()):
        raise FlashTalkError(f"{folder}: {got} wheels for {len(pinned_wheels())} pinned names")


def copy_golden(source: Path, dest: Path, room: int) -> tuple[list[str], list[str]]:
    """The golden files in GOLDEN_ORDER that fit in `room` bytes (with each family's JSON files) into `dest`;
    returns (carried, left out) as family/file names and writes them to dest/SUBSET."""
    if dest.exists():
        shutil.rmtree(dest)
    carried, left = [], []
    used = 0
    for family in dict.fromkeys(f for f, _ in GOLDEN_ORDER):
        for meta in sorted((source / family).glob("*.json")):
            (dest / family).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(meta, dest / family / meta.name)
            used += meta.stat().st_size
    for family, name in GOLDEN_ORDER:
        src = source / family / name
        size = src.stat().st_size if src.is_file() else None
        if size is not None and used + size <= room:
            shutil.copyfile(src, dest / family / name)
            used += size
            carried.append(f"{family}/{name}")
        else:
            left.append(f"{family}/{name}" + ("" if size is not None else " (not in the source)"))
    dest.mkdir(parents=True, exist_ok=True)
    (dest / SUBSET_FILE).write_text("".join(f"{c}\n" for c in carried))
    return carried, left


def prepare(repo: Path, golden_source: Path | None, python: str = DEVICE_PYTHON, commit: str | None = None) -> int:
    """Wheels, commit and golden subset into the tree's ignored folders; prints what travels. 0 if it fits."""
    repo = repo.resolve()
    wheels, golden = repo / WHEELS, repo / GOLDEN
    print(f"fetching {len(pinned_wheels())} pinned wheels (CPython {python}, manylinux x86_64) into {wheels}")
    fetch_wheels(wheels, python)
    sha = commit or _git(repo, "rev-parse", "--short", "HEAD").strip() or "unknown"
    if _git(repo, "status", "--porcelain", "--untracked-files=no").strip():
        sha += "-dirty"
    (wheels / COMMIT_FILE).write_text(sha + "\n")
    tree, whl = travelling_tree(repo), _folder_size(wheels)
    carried: list[str] = []
    if golden_source is not None and (golden_source / "liveportrait").is_dir():
        room = TRAVEL_LIMIT - TRAVEL_MARGIN - tree - whl
        carried, left = copy_golden(golden_source, golden, room)
        print(f"golden subset from {golden_source}: {', '.join(carried) or 'nothing fits'}")
        if left:
            print(f"  left out (no room in 64 MiB; their tests skip, saying so): {', '.join(left)}")
    else:
        if golden.exists():
            shutil.rmtree(golden)
        print(f"no golden data at {golden_source}: the golden checks will skip")
    gold = _folder_size(golden)
    total = tree + whl + gold
    print(f"\ncommit {sha}")
    print(f"travels: tree {_mib(tree)} + {WHEELS} {_mib(whl)} + {GOLDEN} {_mib(gold)} = {_mib(total)} of 64.0 MiB")
    if total > TRAVEL_LIMIT:
        print("TOO LARGE: the call would be refused (free space, or carry less)")
        return 1
    carry = f'["{WHEELS}", "{GOLDEN}"]' if gold else f'["{WHEELS}"]'
    print(f"\nnext, on the lent GPU (carry {carry}, timeout_s 360):\n  python3 -m flashtalk lease run --out $OUT")
    return 0


# ------------------------------------------------------------------------------------------------ run

PREFLIGHT = r"""
import importlib, os, shutil, subprocess, sys, sysconfig, warnings
warnings.simplefilter("ignore")  # e.g. jsonschema's deprecated __version__
def version(name):
    try:
        m = importlib.import_module(name)
        return getattr(m, "__version__", "present") + "  " + os.path.dirname(m.__file__)
    except Exception as exc:
        return f"MISSING ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
print(f"python     {sys.version.split()[0]}  {sys.executable}")
for name in ("torch", "triton", "numpy", "cv2", "av", "soundfile", "starlette", "uvicorn", "websockets",
             "pynvml", "jsonschema", "pytest", "flashtalk"):
    print(f"{name:<10} {version(name)}")
try:
    import cv2
    print("haar       " + ("yes" if hasattr(cv2, "CascadeClassifier") else "no (OpenCV 5: --crop auto needs LivePortrait's face models)"))
except Exception:
    pass
try:
    import torch
    print(f"cuda       {torch.version.cuda}, available: {torch.cuda.is_available()}")
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print(f"gpu        {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs")
except Exception as exc:
    print(f"torch      broken: {exc}")
smi = shutil.which("nvidia-smi")
if smi:
    q = subprocess.run([smi, "--query-gpu=name,driver_version,memory.used,memory.total,clocks.sm", "--format=csv,noheader"],
                       capture_output=True, text=True, timeout=30)
    print(f"nvidia-smi {q.stdout.strip() or q.stderr.strip()}")
cc = next((shutil.which(c) for c in (os.environ.get("CC", ""), "cc", "gcc", "clang") if c and shutil.which(c)), None)
print(f"compiler   {cc or 'NONE: Triton cannot build its launcher (install gcc)'}")
inc = os.path.join(sysconfig.get_paths()["include"], "Python.h")
print(f"Python.h   {inc if os.path.isfile(inc) else 'MISSING at ' + inc + ' (Triton needs the Python headers)'}")
print(f"cpus       {os.cpu_count()}")
"""


def _install(wheels: Path, target: Path, log) -> None:
    files = sorted(str(w) for w in wheels.glob("*.whl"))
    if not files:
        raise FlashTalkError(f"no wheels in {wheels}: run `flashtalk lease prepare` first and carry {WHEELS}")
    import importlib.util

    if importlib.util.find_spec("pip") is None:  # a wheel is a zip of what --target would hold
        import zipfile

        for f in files:
            with zipfile.ZipFile(f) as z:
                z.extractall(target)
        log(f"unpacked {len(files)} wheels into {target} (this Python has no pip)")
        return
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    cmd += ["--no-cache-dir", "--upgrade", "--disable-pip-version-check", "--target", str(target), *files]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"PIP_NO_INDEX": "1"})
    log(f"installed {len(files)} wheels offline into {target}" if done.returncode == 0 else done.stderr)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["pip install failed"])[-1]
        raise FlashTalkError(f"installing the carried wheels failed: {last}")


def _commit(wheels: Path) -> str:
    if os.environ.get("FLASHTALK_COMMIT"):
        return os.environ["FLASHTALK_COMMIT"]
    path = wheels / COMMIT_FILE
    return path.read_text().strip() if path.is_file() else "unknown"


def _pack(work: Path, out: Path) -> list[str]:
    """The suite's results.json, summary.md and plots.png into `out`; everything else of `work` into one
    rest.tar.gz. Returns the names written."""
    names = []
    for name in ("results.json", "summary.md", "plots.png"):
        if (work / name).is_file():
            shutil.copyfile(work / name, out / name)
            names.append(name)
    rest = [p for p in sorted(work.rglob("*")) if p.is_file() and not (p.parent == work and p.name in names)]
    if rest:
        with tarfile.open(out / "rest.tar.gz", "w:gz") as tar:
            for p in rest:
                tar.add(p, arcname=str(p.relative_to(work)))
        names.append("rest.tar.gz")
    return names


def check_results(out: Path) -> list[str]:
    """What would not come back from `out`: over MAX_RESULT_FILES files, deeper than 2 folders, over 16 MiB,
    or a name outside letters, digits, '.', '_' and '-'."""
    import re

    files = [p for p in out.rglob("*") if p.is_file()]
    bad = [f"{len(files)} files (at most {MAX_RESULT_FILES} come back)"] if len(files) > MAX_RESULT_FILES else []
    for p in files:
        rel = p.relative_to(out)
        if len(rel.parts) > 3:
            bad.append(f"{rel}: more than 2 folders deep")
        if p.stat().st_size > 16 * MIB:
            bad.append(f"{rel}: over 16 MiB")
        if not all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for part in rel.parts):
            bad.append(f"{rel}: a name with other characters")
    return bad


def run(repo: Path, out: Path, *, budget_s: float | None, smoke: bool, target: Path | None, cases: list[str]) -> int:
    """Install the carried wheels, preflight, the suite, the results packed into `out`; the suite's status."""
    start = time.perf_counter()
    repo = repo.resolve()
    out.mkdir(parents=True, exist_ok=True)
    budget = budget_s or (SMOKE_BUDGET_S if smoke else DEFAULT_BUDGET_S)
    log_path = out / "suite.log"
    log_file = open(log_path, "w")

    def log(text: str) -> None:
        print(text, flush=True)
        log_file.write(text + "\n")
        log_file.flush()

    scratch = tempfile.TemporaryDirectory(prefix="flashtalk-lease-")
    try:
        wheels = repo / WHEELS
        target = target or Path(scratch.name) / "site"
        _install(wheels, target, log)
        golden = repo / GOLDEN
        env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
        env.update(
            PYTHONPATH=os.pathsep.join([str(target), str(repo), *filter(None, [os.environ.get("PYTHONPATH")])]),
            PIP_NO_INDEX="1",
            PYTHONUNBUFFERED="1",
            FLASHTALK_COMMIT=_commit(wheels),
        )
        if (golden / SUBSET_FILE).is_file():
            env["FLASHTALK_GOLDEN"] = str(golden)
        pre = subprocess.run(
            [sys.executable, "-c", PREFLIGHT], cwd=repo, env=env, capture_output=True, text=True, timeout=120
        )
        preflight = pre.stdout + pre.stderr + f"commit     {env['FLASHTALK_COMMIT']}\n"
        preflight += f"golden     {env.get('FLASHTALK_GOLDEN', 'none carried: the golden checks skip')}\n"
        (out / "preflight.txt").write_text(preflight)
        log("== preflight\n" + preflight.rstrip())
        suite_budget = budget - (time.perf_counter() - start) - PACK_RESERVE_S
        if suite_budget < 30:
            raise FlashTalkError(f"--budget-s {budget:g} leaves {suite_budget:.0f} s for the suite (at least 30)")
        work = Path(scratch.name) / "suite"
        work.mkdir()
        cmd = [sys.executable, "-m", "flashtalk", "bench", "--suite", "gpu", "--out", str(work)]
        cmd += ["--budget-s", f"{suite_budget:.0f}", "--tests", str(repo / "tests"), *(["--smoke"] * smoke)]
        cmd += [a for c in cases for a in ("--case", c)]
        log(f"== suite: {' '.join(cmd[1:])}")
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log_file.write(line)
            print(line, end="", flush=True)
        rc = proc.wait()
        names = _pack(work, out)
    except FlashTalkError as exc:
        log(f"lease run: error: {exc}")
        return 2
    finally:
        log_file.close()
        scratch.cleanup()
    bad = check_results(out)
    print(f"\nresults in {out}: {', '.join(sorted({*names, 'preflight.txt', 'suite.log'}))}")
    if bad:
        print("RESULTS WOULD NOT ALL COME BACK: " + "; ".join(bad))
        rc = rc or 1
    print(f"wall {time.perf_counter() - start:.0f} s of a {budget:.0f} s budget; suite exit status {rc}\n")
    print(_summary_table(out, log_path))
    return rc


def _summary_table(out: Path, log_path: Path) -> str:
    """The suite's short table (from results.json), else the log's last lines (the suite broke)."""
    import json

    from flashtalk.bench.suite import short_table

    try:
        report = json.loads((out / "results.json").read_text())
        return short_table(report["suite"]["steps"], report["records"])
    except (OSError, ValueError, KeyError):
        text = log_path.read_text() if log_path.is_file() else ""
        return "NO RESULTS (the suite did not finish); the log ends:\n" + "\n".join(text.splitlines()[-30:])
