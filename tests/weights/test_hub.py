"""`flashtalk download` against a loopback stand-in for the Hugging Face Hub (tests/hubstub.py, reached
through HF_ENDPOINT): dry run, full download into the cache and into --dir, resume after an interrupted
file, a missing file, a corrupted file, the conditional HuBERT weights, and the offline cache lookup
behind `--weights hf` / `Engine.from_pretrained()`."""

from __future__ import annotations

import argparse
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("huggingface_hub")
pytest.importorskip("onnxruntime")

from flashtalk.cli import main
from flashtalk.errors import FlashTalkError
from flashtalk.weights import hub
from tests.faces_onnx import det_model, l106_model, l203_model
from tests.hubstub import StubHub

LP, JV, HB = (r.repo_id for r in hub.REPOS)


def _onnx_bytes(model) -> bytes:
    return model.SerializeToString()


def _checkpoint(with_audio: bool) -> bytes:
    import torch

    state = {"denoising_net.x": torch.ones(3)}
    if with_audio:
        state["audio_encoder.feature_projection.x"] = torch.ones(2)
    buf = io.BytesIO()
    torch.save({"args": argparse.Namespace(), "model": state, "iter": 7}, buf)
    return buf.getvalue()


def _published(with_audio: bool = True) -> dict[str, dict[str, bytes]]:
    rng = np.random.default_rng(21)
    lp = {
        f: rng.integers(0, 256, 40_000 + 1000 * i, dtype=np.uint8).tobytes()
        for i, f in enumerate(hub.REPOS[0].files)
        if f.endswith(".pth")
    }
    lp["liveportrait/landmark.onnx"] = _onnx_bytes(l203_model())
    lp["insightface/models/buffalo_l/det_10g.onnx"] = _onnx_bytes(det_model())
    lp["insightface/models/buffalo_l/2d106det.onnx"] = _onnx_bytes(l106_model())
    jv = {
        "motion_generator/motion_generator_hubert_chinese.pt": _checkpoint(with_audio),
        "motion_template/motion_template.pkl": rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(),
    }
    hb = {"config.json": b'{"model_type": "hubert", "hidden_size": 768}', "pytorch_model.bin": b"\x00" * 3000}
    return {LP: lp, JV: jv, HB: hb}


@pytest.fixture
def stub(tmp_path, monkeypatch):
    s = StubHub()
    published = _published()
    for r, lic in zip(hub.REPOS, ("mit", "mit", "mit")):
        s.add(r.repo_id, r.revision, lic, published[r.repo_id])
    monkeypatch.setenv("HF_ENDPOINT", s.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("FLASHTALK_CACHE", str(tmp_path / "ft"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    s.published = published
    yield s
    s.stop()


@pytest.fixture
def no_network_load(monkeypatch):
    """The fake .pth bytes are not networks: record the load call instead of running it."""
    calls = []
    monkeypatch.setattr("flashtalk.weights.bundle.load_networks", lambda folder: calls.append(Path(folder)))
    return calls


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_dry_run_lists_every_file_with_repo_revision_and_size(stub, capsys):
    assert main(["download", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for r in hub.REPOS:
        for f in r.files + r.optional:
            line = next(ln for ln in out.splitlines() if ln.rstrip().endswith(f) or f"{f}  (if needed)" in ln)
            assert r.repo_id in line and r.revision in line
            size = len(stub.published[r.repo_id][f])
            assert hub._size(size) in line
        assert f"licence of {r.repo_id}: mit" in out
    assert "non-commercial research" in out
    assert not any(m == "GET" and "/resolve/" in u for m, u, _ in stub.log)  # nothing fetched


def test_dry_run_offline_touches_no_network(stub, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["download", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "det_10g.onnx" in out and "offline" in out and not stub.log


def test_full_download_into_the_cache_then_weights_hf_resolves_offline(stub, no_network_load, capsys, monkeypatch):
    assert main(["download"]) == 0
    err = capsys.readouterr().err
    assert "non-commercial research" in err and "--weights hf" in err
    assert "skip TencentGameMate/chinese-hubert-base/pytorch_model.bin" in err  # the checkpoint has audio_encoder.*
    assert len(no_network_load) == 1
    view = no_network_load[0]
    for r in hub.REPOS:
        for f in r.files:
            assert _sha(view / r.folder / f) == hashlib.sha256(stub.published[r.repo_id][f]).hexdigest()
    # offline, with the hub gone: the cache resolves to the same published-layout folder
    stub.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    folder = hub.resolve_cache()
    from flashtalk.faces import onnx_models
    from flashtalk.weights.bundle import discover

    found = discover(folder)
    assert {"spade_generator", "motion_generator", "motion_template"} <= set(found)
    assert set(onnx_models.find_files(folder)) == {"det", "l106", "l203"}


def test_engine_from_pretrained_reads_the_cache(stub, no_network_load, monkeypatch):
    assert main(["download", "--no-load"]) == 0
    stub.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    class Backend:
        def __init__(self, nets, dev, **kw):
            self.device = dev

    monkeypatch.setattr("flashtalk.runtime.backends.network.NetworkBackend", Backend)
    from flashtalk.runtime.engine import Engine

    engine = Engine.from_pretrained(device="cpu")
    assert no_network_load == [hub.resolve_cache()]
    assert engine.faces is not None  # LivePortrait's face models came with the download


def test_download_into_a_folder_that_weights_accepts(stub, no_network_load, tmp_path):
    target = tmp_path / "weights"
    assert main(["download", "--dir", str(target)]) == 0
    assert no_network_load == [target]
    from flashtalk.faces import onnx_models
    from flashtalk.weights.bundle import discover

    assert {"warping_module", "motion_generator", "motion_template"} <= set(discover(target))
    onnx_models.load(target)
    assert (target / "LivePortrait/insightface/models/buffalo_l/det_10g.onnx").is_file()


def test_a_dropped_connection_resumes_from_where_it_stopped(stub, tmp_path):
    rel = "liveportrait/base_models/warping_module.pth"
    stub.faults[(LP, rel)] = "drop_once"
    assert main(["download", "--dir", str(tmp_path / "w"), "--no-load"]) == 0
    size = len(stub.published[LP][rel])
    first, again = stub.gets(rel)
    assert first is None and 0 < int(again[len("bytes=") : -1]) <= size // 2
    assert _sha(tmp_path / "w/LivePortrait" / rel) == hashlib.sha256(stub.published[LP][rel]).hexdigest()


def test_a_file_interrupted_in_an_earlier_run_resumes(stub):
    rel = "liveportrait/base_models/motion_extractor.pth"
    data = stub.published[LP][rel]
    blobs = Path(hub.cache_dir()) / f"models--{LP.replace('/', '--')}" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{hashlib.sha256(data).hexdigest()}.part").write_bytes(data[:12345])  # what a kill leaves
    assert main(["download", "--no-load"]) == 0
    assert stub.gets(rel) == ["bytes=12345-"]
    assert _sha(hub.resolve_cache() / "LivePortrait" / rel) == hashlib.sha256(data).hexdigest()


def test_a_missing_file_is_one_clear_line(stub, capsys):
    rel = "insightface/models/buffalo_l/det_10g.onnx"
    stub.faults[(LP, rel)] = "missing"
    assert main(["download", "--no-load"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rel in err and "404" in err and LP in err
    assert not list(Path(hub.cache_dir()).rglob("det_10g.onnx"))


def test_a_corrupted_file_is_deleted_and_reported(stub, capsys, tmp_path):
    rel = "liveportrait/base_models/spade_generator.pth"
    stub.faults[(LP, rel)] = "corrupt"
    assert main(["download", "--no-load"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rel in err and "checksum" in err
    assert not [p for p in Path(hub.cache_dir()).rglob("*") if p.name.startswith("spade") or p.suffix == ".part"]
    good = hashlib.sha256(stub.published[LP][rel]).hexdigest()
    assert not (Path(hub.cache_dir()) / f"models--{LP.replace('/', '--')}" / "blobs" / good).exists()
    with pytest.raises(FlashTalkError):
        hub.resolve_cache()  # nothing half-written is taken as complete
    del stub.faults[(LP, rel)]
    assert main(["download", "--no-load"]) == 0
    assert _sha(hub.resolve_cache() / "LivePortrait" / rel) == good


def test_hubert_weights_come_only_when_the_checkpoint_lacks_them(stub, tmp_path):
    stub.files[(JV, "motion_generator/motion_generator_hubert_chinese.pt")] = _checkpoint(with_audio=False)
    assert main(["download", "--dir", str(tmp_path / "w"), "--no-load"]) == 0
    assert (tmp_path / "w/chinese-hubert-base/pytorch_model.bin").is_file()


def test_downloading_offline_and_bad_revisions_are_clear_errors(stub, capsys, monkeypatch):
    with pytest.raises(Exception, match="REPO=REVISION"):
        hub.revisions(["main"])
    assert hub.revisions(["LivePortrait=main"])[LP] == "main"
    assert main(["download", "--revision", "nope/repo=1"]) == 2
    assert "unknown repo" in capsys.readouterr().err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["download"]) == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err


def test_a_second_run_fetches_nothing(stub, tmp_path):
    assert main(["download", "--dir", str(tmp_path / "w"), "--no-load"]) == 0
    before = sum(1 for m, u, _ in stub.log if m == "GET" and "/resolve/" in u)
    assert before == sum(len(r.files) for r in hub.REPOS)
    assert main(["download", "--dir", str(tmp_path / "w"), "--no-load"]) == 0
    assert sum(1 for m, u, _ in stub.log if m == "GET" and "/resolve/" in u) == before
