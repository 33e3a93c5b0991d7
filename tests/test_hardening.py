"""Regression tests for the file-side findings of the fuzzing campaign (issue 22, items 2 and 6-10):
each class of hostile input gets a one-line FlashTalkError (CLI exit 2) or a correct result, and no
partial file is left behind."""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from flashtalk.cli import main
from flashtalk.cli.animate import demo_assets
from flashtalk.errors import FlashTalkError
from flashtalk.faces.portrait_crop import crop_box, parse_crop
from flashtalk.io import audio as fa
from flashtalk.io.media import VideoWriter, load_image
from flashtalk.runtime.offline import FrameWriter
from flashtalk.weights import bundle as fb
from flashtalk.weights.joyvasa import load_checkpoint, load_pickled_arrays
from flashtalk.weights.presets import Preset

PORTRAIT, _ = demo_assets()
ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------- item 2: resampler bounds


def test_common_rates_resample_exactly():
    for rate, ratio in (
        (44100, (160, 441)),
        (48000, (1, 3)),
        (22050, (320, 441)),
        (11025, (640, 441)),
        (8000, (2, 1)),
        (192000, (1, 12)),
    ):
        assert fa._ratio(rate, 16000) == ratio


@pytest.mark.parametrize("rate", [44099, 383999, 383953, 4001, 100003])
def test_odd_rates_are_approximated_within_the_stated_error_and_size(rate):
    up, down = fa._ratio(rate, 16000)
    assert max(up, down) <= fa.MAX_PHASES
    assert abs((up / down) / (16000 / rate) - 1) <= 3.1e-5
    bank, _ = fa._build_bank(up, down)
    assert bank.nbytes <= 10 * 2**20


def test_odd_rate_resampling_keeps_the_tone():
    rate = 44099
    t = np.arange(rate) / rate
    y = fa.resample(np.sin(2 * np.pi * 1000 * t), rate, 16000)
    assert abs(len(y) - 16000) <= 1
    n = np.arange(len(y))
    ideal = np.sin(2 * np.pi * 1000 * n / 16000)
    # rule: the documented passband flatness (0.01 dB = 1.15e-3 of the amplitude); a rate error of 3e-5 would
    # drift the phase by 0.19 rad within the second
    assert np.abs(y[500:-500] - ideal[500:-500]).max() < 10 ** (0.01 / 20) - 1


@pytest.mark.parametrize("rate", [0, 3999, 384001, 1 << 31, 16000.5, float("nan"), float("inf"), True])
def test_rates_outside_the_accepted_range_are_refused(rate):
    with pytest.raises(FlashTalkError, match=r"sample rate must be an integer in \[4000, 384000\]"):
        fa.StreamingResampler(rate, 16000)


def test_the_bank_cache_is_bounded_in_bytes(monkeypatch):
    monkeypatch.setattr(fa, "_banks", type(fa._banks)())
    monkeypatch.setattr(fa, "BANK_CACHE_BYTES", 4 << 20)
    for rate in (4001, 4003, 4007, 4009):  # ~8.8 MiB banks each
        fa._filter_bank(*fa._ratio(rate, 16000))
    assert len(fa._banks) == 1  # only the latest stays when each bank alone exceeds the cap


def _wav_with_rate(path: Path, rate_field: int) -> Path:
    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.sin(np.arange(8000) * 0.1), 16000, format="WAV", subtype="PCM_16")
    b = bytearray(buf.getvalue())
    b[24:28] = struct.pack("<I", rate_field)
    path.write_bytes(bytes(b))
    return path


@pytest.mark.parametrize("rate", [0x7FFFFFFF, 0xFFFFFFFF, 384001])
def test_a_wav_header_with_an_absurd_rate_is_one_error(tmp_path, rate):
    start = time.monotonic()
    with pytest.raises(FlashTalkError, match="x.wav.*(sample rate|not a decodable)"):
        fa.load_audio(_wav_with_rate(tmp_path / "x.wav", rate))
    assert time.monotonic() - start < 10  # no filter bank of a TiB is attempted


# ----------------------------------------------------------------------------------- item 6: writer failures


class _Clip:
    def __init__(self, samples):
        self.samples, self.rate = samples, 16000


def test_an_encoder_failure_at_flush_ends_the_writer(tmp_path):
    """Huge samples after the last video frame make the AAC encoder fail in close(): the producer,
    waiting in finish(), must get the error instead of a deadlock."""
    x = (0.3 * np.sin(np.arange(32000) * 0.05)).astype(np.float32)
    x[-3000:] = 1e30
    writer = FrameWriter(VideoWriter(tmp_path / "w.mp4", width=64, height=64, fps=25, audio=_Clip(x), metadata={}), 2)
    writer.start()
    result = {}

    def produce():
        try:
            for _ in range(5):
                writer.put(np.zeros((5, 64, 64, 3), np.uint8))
            writer.finish()
            result["r"] = "finished"
        except BaseException as exc:
            result["r"] = exc

    t = threading.Thread(target=produce, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "writer deadlocked"
    assert isinstance(result["r"], FlashTalkError) and "audio encoder failed" in str(result["r"])
    assert "peaks at 1e+30" in str(result["r"])


def _huge_wav(path: Path) -> Path:
    speech = (0.3 * np.sin(np.arange(9600) * 0.05)).astype(np.float32)
    speech[-2000:] = 1e30
    sf.write(path, speech, 16000, subtype="FLOAT")
    return path


def test_animate_with_huge_samples_exits_2_and_leaves_nothing(tmp_path, capsys):
    wav = _huge_wav(tmp_path / "huge.wav")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    rc = main(["animate", str(PORTRAIT), str(wav), "-o", str(out_dir / "x.mp4"), "--crop", "center", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "audio encoder failed" in err and len(err.strip().splitlines()) == 1
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_removes_the_partial_output(tmp_path, sig, code):
    wav = tmp_path / "long.wav"
    sf.write(wav, 0.3 * np.sin(np.arange(16000 * 20) * 0.05), 16000)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # SIGINT as a terminal delivers it, also when this runs as a background job (which inherits SIGINT ignored)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flashtalk",
            "animate",
            str(PORTRAIT),
            str(wav),
            "-o",
            str(out_dir / "x.mp4"),
            "--crop",
            "center",
            "-q",
            "--no-watermark",
        ],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while not any(out_dir.iterdir()) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert any(p.name.startswith(".x.mp4.partial") for p in out_dir.iterdir()), "no partial output appeared"
        proc.send_signal(sig)
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == code
    assert list(out_dir.iterdir()) == []
    assert "Traceback" not in proc.stderr.read()


# ----------------------------------------------------------------------------------- item 7: clear errors


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_a_png_text_chunk_bomb_is_one_error(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (96, 96), (90, 60, 30)).save(buf, "PNG")
    png = buf.getvalue()
    bomb = _png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"a" * (48 << 20), 9))
    (tmp_path / "bomb.png").write_bytes(png[:33] + bomb + png[33:])
    with pytest.raises(FlashTalkError, match="not a readable image.*(too large|MAX_TEXT)"):
        load_image(tmp_path / "bomb.png")


@pytest.mark.parametrize(
    "spec, match",
    [
        ("nan,0,100,100", "finite"),
        ("0,0,inf,100", "finite"),
        ("0,0,1e300,1e300", "too large"),
        ("-1e300,-1e300,1e300,1e300", "outside"),
        ("-10,-10,1e300,1e300", "too large"),
        ("0,0,4000000000,4000000000", "too large"),
        ("1e308,1e308,1,1", "outside"),
        ("0,0,-5,10", "positive"),
        ("1,2,3", "X,Y,W,H"),
    ],
)
def test_bad_crop_boxes_are_one_error(spec, match):
    photo = np.zeros((100, 120, 3), np.uint8)
    with pytest.raises(FlashTalkError, match=match):
        crop_box(photo, spec)


def test_crop_box_from_the_api_is_checked_too():
    with pytest.raises(FlashTalkError, match="finite"):
        crop_box(np.zeros((100, 100, 3), np.uint8), (0.0, float("nan"), 10.0, 10.0))
    assert parse_crop("10,20,30,40") == (10.0, 20.0, 30.0, 40.0)


@pytest.mark.parametrize("case", ["nan crop", "huge crop", "bomb png", "absurd wav rate"])
def test_the_cli_gives_one_line_and_exit_2(tmp_path, capsys, case):
    wav = tmp_path / "s.wav"
    sf.write(wav, 0.3 * np.sin(np.arange(8000) * 0.05), 16000)
    portrait, crop = PORTRAIT, "center"
    if case == "nan crop":
        crop = "nan,0,100,100"
    elif case == "huge crop":
        crop = "0,0,1e300,1e300"
    elif case == "bomb png":
        buf = io.BytesIO()
        Image.new("RGB", (96, 96), (90, 60, 30)).save(buf, "PNG")
        png = buf.getvalue()
        portrait = tmp_path / "bomb.png"
        portrait.write_bytes(
            png[:33]
            + _png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\1\0\0\0" + zlib.compress(b"a" * (48 << 20), 9))
            + png[33:]
        )
    else:
        wav = _wav_with_rate(tmp_path / "r.wav", 0x7FFFFFFF)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    rc = main(["animate", str(portrait), str(wav), "-o", str(out_dir / "x.mp4"), "--crop", crop, "-q"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("flashtalk animate: error:"), lines
    assert list(out_dir.iterdir()) == []


def _m4a(title: bytes) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        c.metadata["title"] = "Q" * len(title)
        s = c.add_stream("aac", rate=22050)
        s.layout = "mono"
        frame = av.AudioFrame.from_ndarray(
            (0.3 * np.sin(np.arange(22050) * 0.05)).astype(np.float32)[None], format="fltp", layout="mono"
        )
        frame.sample_rate, frame.pts = 22050, 0
        for p in [*s.encode(frame), *s.encode(None)]:
            c.mux(p)
    data = buf.getvalue()
    return data.replace(b"Q" * len(title), title, 1)


def test_a_non_utf8_tag_does_not_stop_decoding(tmp_path):
    (tmp_path / "tag.m4a").write_bytes(_m4a(b"\xff\xfe\xc3\x28\x80\x81"))
    clip = fa.load_audio(tmp_path / "tag.m4a")
    assert clip.rate == 16000 and 0.95 < clip.duration < 1.1


def test_a_stream_without_a_rate_is_one_error(tmp_path):
    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.sin(np.arange(8000) * 0.1), 16000, format="WAV", subtype="PCM_16")
    b = bytearray(buf.getvalue())
    b[20:22] = struct.pack("<H", 0x8000)  # unknown format tag: libsndfile refuses, PyAV opens a rate-less stream
    (tmp_path / "x.wav").write_bytes(bytes(b))
    with pytest.raises(FlashTalkError, match="x.wav"):
        fa.load_audio(tmp_path / "x.wav")


# ----------------------------------------------------------------------------------- item 8: crafted weights


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("bundle") / "tiny.safetensors"
    return fb.write_bundle(fb.seeded_networks("tiny"), path).read_bytes()


def _rewrite(data: bytes, edit) -> bytes:
    n = struct.unpack("<Q", data[:8])[0]
    header, body = json.loads(data[8 : 8 + n]), data[8 + n :]
    edit(header)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + body


def _with_config(net: str, **changes):
    def edit(header):
        configs = json.loads(header["__metadata__"]["flashtalk_configs"])
        configs[net].update(changes)
        header["__metadata__"]["flashtalk_configs"] = json.dumps(configs)

    return edit


@pytest.mark.parametrize(
    "net, changes, match",
    [
        ("motion_generator", {"n_motions": float("inf")}, "'n_motions' = inf must be finite"),
        ("motion_generator", {"fps": 0}, r"'fps' = 0 is out of range: allowed \[1, 240\]"),
        ("motion_generator", {"n_heads": 0}, "'n_heads' = 0 is out of range"),
        ("motion_generator", {"feature_dim": -64}, "'feature_dim' = -64 is out of range"),
        ("audio_encoder", {"hidden_size": "wide"}, "'hidden_size' = 'wide' must be a number"),
        ("audio_encoder", {"conv_stride": [5, 0, 2]}, r"'conv_stride\[1\]' = 0 is out of range"),
        (
            "audio_encoder",
            {
                "hidden_size": 8192,
                "intermediate_size": 65536,
                "num_hidden_layers": 128,
                "num_attention_heads": 8,
                "num_conv_pos_embedding_groups": 8,
            },
            "MiB file can hold",
        ),
        ("motion_generator", {"bogus": 1}, "unknown MotionGeneratorConfig field"),
    ],
)
def test_bundle_config_fields_are_checked_with_file_and_field(tiny_bundle, tmp_path, net, changes, match):
    path = tmp_path / "b.safetensors"
    path.write_bytes(_rewrite(tiny_bundle, _with_config(net, **changes)))
    with pytest.raises(FlashTalkError, match=match) as info:
        fb.load_bundle(path)
    assert str(path) in str(info.value) and f"flashtalk_configs].{net}" in str(info.value)


def test_deeply_nested_bundle_config_is_one_error(tiny_bundle, tmp_path):
    def edit(header):
        header["__metadata__"]["flashtalk_configs"] = "[" * 50_000 + "]" * 50_000

    path = tmp_path / "b.safetensors"
    path.write_bytes(_rewrite(tiny_bundle, edit))
    with pytest.raises(FlashTalkError, match="nested too deeply"):
        fb.load_bundle(path)


def test_the_unmutated_tiny_bundle_loads(tiny_bundle, tmp_path):
    path = tmp_path / "b.safetensors"
    path.write_bytes(tiny_bundle)
    assert fb.load_bundle(path).preset == "tiny"


def test_joyvasa_args_are_checked(tmp_path):
    base = Preset.from_name("tiny").motion
    for value, match in (
        (float("inf"), "'n_motions' = inf must be finite"),
        (0, "'n_motions' = 0 is out of range"),
        ("many", "'n_motions' = 'many' must be a number"),
        (10**40, "out of range"),
    ):
        path = tmp_path / "ckpt.pt"
        torch.save({"args": argparse.Namespace(n_motions=value), "model": {}}, path)
        with pytest.raises(FlashTalkError, match=match) as info:
            load_checkpoint(path, base_config=base)
        assert "ckpt.pt ['args']" in str(info.value)


def test_hf_index_without_weight_map_and_outside_names(tmp_path):
    from flashtalk.weights.hubert import _read_hf_weights

    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(FlashTalkError, match="no 'weight_map'"):
        _read_hf_weights(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../../etc/passwd"}}))
    with pytest.raises(FlashTalkError, match="outside its folder"):
        _read_hf_weights(tmp_path)


@pytest.mark.parametrize(
    "data, match",
    [
        (
            b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n\x8a\x05"
            + (10**11).to_bytes(5, "little")
            + b"\x85cnumpy\ndtype\nX\x02\x00\x00\x00f8\x89\x88\x87R\x87R.",
            "800,000,000,000-byte array",
        ),
        (b"\x80\x02cnumpy\ndtype\nX\x0b\x00\x00\x00V1000000000\x89\x88\x87R.", "1,000,000,000-byte array"),
        (b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"abc", "not a valid pickle"),
        (b"\x80\x04\x95" + struct.pack("<Q", 1 << 40) + b"}.", "not a valid pickle"),
    ],
)
def test_numpy_only_unpickler_refuses_expansion_before_allocating(tmp_path, data, match):
    (tmp_path / "t.pkl").write_bytes(data)
    with pytest.raises(FlashTalkError, match=match):
        load_pickled_arrays(tmp_path / "t.pkl")


def test_numpy_only_unpickler_still_reads_arrays(tmp_path):
    d = {"a": np.arange(1000, dtype=np.float32), "b": np.float32(2.0)}
    (tmp_path / "t.pkl").write_bytes(pickle.dumps(d, protocol=2))
    back = load_pickled_arrays(tmp_path / "t.pkl")
    assert np.array_equal(back["a"], d["a"]) and back["b"] == 2.0


# ----------------------------------------------------------------------------------- item 9: convert-weights


def test_convert_checks_the_output_before_loading(tmp_path, capsys):
    (tmp_path / "dir.safetensors").mkdir()
    for out, match in (
        (tmp_path / "dir.safetensors", "is a folder"),
        (tmp_path / "x.bin", "must end in"),
        (tmp_path / "no" / "x.safetensors", "does not exist"),
    ):
        rc = main(["convert-weights", str(tmp_path / "no-such-weights"), "-o", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and match in err, err
    existing = tmp_path / "mine.safetensors"
    existing.write_bytes(b"user data")
    rc = main(["convert-weights", str(tmp_path / "no-such-weights"), "-o", str(existing)])
    assert rc == 2 and "already exists" in capsys.readouterr().err and existing.read_bytes() == b"user data"


def test_convert_never_touches_a_users_partial_and_cleans_up(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out.safetensors"
    users = tmp_path / "out.safetensors.partial"
    users.write_bytes(b"the user's own file")
    monkeypatch.setattr(fb, "load_folder", lambda folder: fb.seeded_networks("tiny"))

    import safetensors.torch

    def failing(tensors, path, metadata=None):  # the toolkit's writer fails halfway through its temporary
        Path(path).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", failing)
    rc = main(["convert-weights", str(tmp_path), "-o", str(out)])
    assert rc == 2 and "No space left" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors.partial"]
    monkeypatch.undo()
    monkeypatch.setattr(fb, "load_folder", lambda folder: fb.seeded_networks("tiny"))
    assert main(["convert-weights", str(tmp_path), "-o", str(out)]) == 0
    assert users.read_bytes() == b"the user's own file" and fb.load_bundle(out).preset == "tiny"
    assert out.stat().st_mode & 0o777 == users.stat().st_mode & 0o777  # the umask's mode, not 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors", "out.safetensors.partial"]


# ----------------------------------------------------------------------------------- item 10: quiet garbage


def _gradient():
    return np.linspace(0.0, 1.0, 96 * 96).reshape(96, 96)


@pytest.mark.parametrize("kind", ["png16", "tiff-I", "tiff-F"])
def test_high_bit_depth_grey_images_keep_their_tones(tmp_path, kind):
    g = _gradient()
    image = {
        "png16": Image.fromarray(np.rint(g * 65535).astype(np.uint16)),
        "tiff-I": Image.fromarray(np.rint(g * 65535).astype(np.int32)),
        "tiff-F": Image.fromarray(g.astype(np.float32)),
    }[kind]
    path = tmp_path / ("x.png" if kind == "png16" else "x.tif")
    image.save(path)
    rgb = load_image(path)
    expected = np.rint(g * 255)  # the 8-bit version of the same gradient
    # rule: one 8-bit level (the two roundings, to 16 bits and to 8 bits); clipping would be off by up to 254
    assert rgb.shape == (96, 96, 3) and np.abs(rgb[..., 0].astype(float) - expected).max() <= 1


def test_a_float_image_with_nan_pixels_is_refused(tmp_path):
    a = _gradient().astype(np.float32)
    a[3, 3] = np.nan
    Image.fromarray(a).save(tmp_path / "x.tif")
    with pytest.raises(FlashTalkError, match="NaN"):
        load_image(tmp_path / "x.tif")


def test_non_finite_weights_are_refused(tiny_bundle, tmp_path):
    n = struct.unpack("<Q", tiny_bundle[:8])[0]
    header = json.loads(tiny_bundle[8 : 8 + n])
    name = next(k for k, v in header.items() if k.startswith("spade_generator.") and v.get("dtype") == "F32")
    lo, hi = header[name]["data_offsets"]
    body = bytearray(tiny_bundle[8 + n :])
    body[lo:hi] = b"\x00\x00\xc0\x7f" * ((hi - lo) // 4)
    path = tmp_path / "nan.safetensors"
    path.write_bytes(tiny_bundle[: 8 + n] + bytes(body))
    with pytest.raises(FlashTalkError, match=r"\[spade_generator\]: non-finite weights in .*NaN"):
        fb.load_bundle(path)


def test_non_finite_weights_in_a_hugging_face_folder_are_refused(tmp_path):
    from safetensors.torch import save_file

    from flashtalk.weights.hubert import load_hf_audio_encoder

    audio = fb.seeded_networks("tiny").audio
    state = {k: v.clone().contiguous() for k, v in audio.state_dict().items()}
    state["encoder.layers.1.feed_forward.output_dense.weight"][0, 0] = float("inf")
    save_file(state, str(tmp_path / "model.safetensors"))
    c = audio.cfg
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "hubert",
                "hidden_size": c.hidden_size,
                "num_hidden_layers": c.num_hidden_layers,
                "num_attention_heads": c.num_attention_heads,
                "intermediate_size": c.intermediate_size,
                "conv_dim": list(c.conv_dim),
                "conv_kernel": list(c.conv_kernel),
                "conv_stride": list(c.conv_stride),
                "num_conv_pos_embeddings": c.num_conv_pos_embeddings,
                "num_conv_pos_embedding_groups": c.num_conv_pos_embedding_groups,
            }
        )
    )
    with pytest.raises(FlashTalkError, match=r"non-finite weights in encoder\.layers\.1\.feed_forward.*1 inf"):
        load_hf_audio_encoder(tmp_path)
