"""Weights-free preview: procedural motion from audio and the geometric warp renderer, measured on a synthetic
speech-like signal and a procedurally drawn portrait, and on the bundled demo photo and speech; its control ranges
lie inside ControlSet's."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

import flashtalk
from flashtalk.errors import FlashTalkError
from flashtalk.kernels import last_choice
from flashtalk.models.preview import (
    FaceLayout,
    PreviewMotion,
    PreviewMotionStream,
    PreviewRenderer,
    preview_motion,
)
from flashtalk.runtime.animation import SpeechAnimation
from flashtalk.runtime.backends.preview import PreviewBackend

SR, FPS, HOP = 16000, 25, 640
CLIP_S = 10.0


# ---- synthetic inputs --------------------------------------------------------------------------------
def speech_like(seconds: float = CLIP_S, seed: int = 1) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Bursts of harmonic 'vowels' (F0 contour, formant-shaped harmonics, varying vowel) between silences.
    Returns the signal and the (start, end) seconds of each burst."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * SR), np.float64)
    vowels = [(700, 1200), (300, 2300), (350, 800), (500, 1800)]  # (F1, F2) of a, i, u, e
    bursts, t = [], 0.4
    while True:
        length = rng.uniform(0.35, 0.9)
        if t + length > seconds - 0.3:
            break
        n = int(length * SR)
        time = np.arange(n) / SR
        f0 = rng.uniform(110, 180) * (1 + 0.15 * np.sin(2 * np.pi * time / length))  # rising-falling contour
        phase = 2 * np.pi * np.cumsum(f0) / SR
        f1, f2 = vowels[rng.integers(len(vowels))]
        sig = np.zeros(n)
        for k in range(1, 30):
            fk = k * f0.mean()
            if fk > 4000:
                break
            gain = np.exp(-(((fk - f1) / 150) ** 2)) + 0.6 * np.exp(-(((fk - f2) / 200) ** 2)) + 0.05 / k
            sig += gain * np.sin(k * phase)
        syllables = 0.55 + 0.45 * np.abs(np.sin(np.pi * time * rng.uniform(3, 5)))  # syllable-rate loudness
        fade = np.minimum(1, np.minimum(time, length - time) / 0.03)
        sig *= syllables * fade * rng.uniform(0.15, 0.35) / np.abs(sig).max()
        start = int(t * SR)
        out[start : start + n] = sig
        bursts.append((t, t + length))
        t += length + rng.uniform(0.25, 0.7)
    out += rng.normal(0, 1e-4, out.shape)  # faint noise floor, not digital silence
    return out.astype(np.float32), bursts


def portrait(layout: FaceLayout | None = None, seed: int = 3) -> torch.Tensor:
    """A drawn face on the canonical crop geometry: textured skin, hair, eyes with iris, lips, nose."""
    layout = layout or FaceLayout()
    rng = np.random.default_rng(seed)
    n = 512
    y, x = np.mgrid[0:n, 0:n] / n
    img = np.empty((n, n, 3))
    img[:] = np.array([0.35, 0.45, 0.6]) * (0.8 + 0.2 * y)[..., None]  # background gradient

    def blend(mask, color):
        img[:] = img * (1 - mask[..., None]) + mask[..., None] * np.asarray(color)

    def ellipse(cx, cy, rx, ry, soft=0.004):
        d = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
        return np.clip((1 - d) / (soft / min(rx, ry)), 0, 1)

    (lx, ly), (rx_, ry_), (mx, my) = layout.left_eye, layout.right_eye, layout.mouth
    cx = (lx + rx_) / 2
    blend(ellipse(cx, 0.86 + 0.15, 0.42, 0.2), (0.25, 0.22, 0.3))  # shoulders
    blend(ellipse(cx, my + 0.12, 0.09, 0.2), (0.85, 0.66, 0.55))  # neck
    blend(ellipse(cx, 0.44, 0.33, 0.36), (0.22, 0.15, 0.1))  # hair
    blend(ellipse(cx, 0.55, 0.27, 0.34), (0.93, 0.74, 0.62))  # face
    noise = rng.normal(0, 1, (n // 8, n // 8))
    texture = np.kron(noise, np.ones((8, 8)))
    img *= (1 + 0.04 * texture)[..., None]  # skin / hair texture
    for ex, ey in ((lx, ly), (rx_, ry_)):
        blend(ellipse(ex, ey - 0.045, 0.06, 0.012), (0.3, 0.2, 0.15))  # brow
        blend(ellipse(ex, ey, 0.05, 0.022), (0.97, 0.97, 0.95))  # sclera
        blend(ellipse(ex, ey, 0.018, 0.018), (0.25, 0.35, 0.2))  # iris
        blend(ellipse(ex, ey, 0.008, 0.008), (0.02, 0.02, 0.02))  # pupil
    blend(ellipse(cx, (ly + my) / 2 + 0.02, 0.025, 0.02), (0.8, 0.58, 0.48))  # nose tip
    blend(ellipse(mx, my - 0.012, 0.07, 0.014), (0.75, 0.3, 0.3))  # upper lip
    blend(ellipse(mx, my + 0.014, 0.065, 0.018), (0.8, 0.35, 0.35))  # lower lip
    blend(ellipse(mx, my, 0.062, 0.0025), (0.3, 0.08, 0.08))  # lip line
    return torch.from_numpy(np.clip(img, 0, 1)).permute(2, 0, 1).float().contiguous()


# ---- measurements ------------------------------------------------------------------------------------
def _box(y0: float, y1: float, x0: float, x1: float) -> tuple[slice, slice]:
    return slice(int(y0 * 512), int(y1 * 512)), slice(int(x0 * 512), int(x1 * 512))


MOUTH = _box(0.66, 0.84, 0.38, 0.62)
EYES = (_box(0.35, 0.45, 0.32, 0.46), _box(0.35, 0.45, 0.54, 0.68))
HAIR_ROWS = slice(0, 256)


def head_still(motion: PreviewMotion) -> PreviewMotion:
    """The same mouth and blinks, no head motion: isolates the local deformations."""
    zero = np.zeros(len(motion), np.float32)
    return dataclasses.replace(motion, yaw=zero, pitch=zero, roll=zero, tx=zero, ty=zero, scale=zero + 1)


def region_change(renderer: PreviewRenderer, motion: PreviewMotion, crop: torch.Tensor, stop: int):
    """Per frame: mean |frame - source| in the mouth box and in both eye boxes, and the centroid (x, y) in
    pixels of the darkness (hair, brows) in the upper half."""
    mouth, eyes, centroid = [], [], []
    for start in range(0, stop, 16):
        frames = renderer.render(motion, start, min(start + 16, stop))
        assert frames.shape[1:] == (3, 512, 512) and frames.dtype == torch.float32
        assert torch.isfinite(frames).all() and frames.min() >= 0 and frames.max() <= 1
        diff = (frames - crop).abs().mean(1)
        mouth.append(diff[:, MOUTH[0], MOUTH[1]].mean((1, 2)))
        eyes.append(sum(diff[:, rows, cols].mean((1, 2)) for rows, cols in EYES))
        centroid.append(_dark_centroid(frames, HAIR_ROWS, 0.25))
    return torch.cat(mouth).numpy(), torch.cat(eyes).numpy(), np.concatenate(centroid)


def frame_rms(audio: np.ndarray, frames: int) -> np.ndarray:
    padded = np.pad(audio.astype(np.float64), (0, frames * HOP - len(audio)))
    return np.sqrt((padded**2).reshape(frames, HOP).mean(1))


def events(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, last + 1) of each run of True."""
    edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
    return list(zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]))


@pytest.fixture(scope="module")
def clip():
    audio, bursts = speech_like()
    motion = preview_motion(audio, seed=0)
    crop = portrait()
    renderer = PreviewRenderer(crop)
    n = len(motion)
    mouth, eyes, _ = region_change(renderer, head_still(motion), crop, n)
    return dict(audio=audio, bursts=bursts, motion=motion, crop=crop, renderer=renderer, mouth=mouth, eyes=eyes)


def speech_and_silence_frames(bursts, n):
    """Frames well inside speech (after its first 100 ms) and well inside silence (>= 300 ms after speech)."""
    t = (np.arange(n) + 0.5) / FPS
    speech, silence = np.zeros(n, bool), t < bursts[0][0]
    for i, (a, b) in enumerate(bursts):
        speech |= (t > a + 0.1) & (t < b)
        following = bursts[i + 1][0] if i + 1 < len(bursts) else CLIP_S
        silence |= (t > b + 0.3) & (t < following)
    return speech, silence


# ---- motion ------------------------------------------------------------------------------------------
def test_motion_frame_count_and_ranges():
    audio, _ = speech_like(2.0)
    audio = audio[: 2 * SR - 100]  # a partial last frame
    motion = preview_motion(audio)
    assert len(motion) == -(-len(audio) // HOP) == 50
    assert PreviewBackend().clip_frames(len(audio)) == 50
    assert 0 <= motion.jaw.min() and motion.jaw.max() <= 1 and motion.jaw.max() > 0.5
    assert 0 <= motion.blink.min() and motion.blink.max() <= 1
    assert np.abs(motion.lip_width).max() <= 1 and 0 <= motion.lip_round.min() and motion.lip_round.max() <= 1
    for name in ("jaw", "yaw", "pitch", "roll", "tx", "ty", "scale"):
        assert np.isfinite(getattr(motion, name)).all()


@pytest.mark.parametrize(
    "chunk_ms", [(40, 200), (40, 40), (200, 200), (13, 317)], ids=["40-200ms", "40ms", "200ms", "odd"]
)
def test_streaming_matches_offline(chunk_ms):
    audio, _ = speech_like(4.0, seed=5)
    audio = audio[:-333]
    offline = preview_motion(audio, seed=7)
    rng = np.random.default_rng(11)
    stream, parts, pos = PreviewMotionStream(seed=7), [], 0
    while pos < len(audio):
        size = int(rng.uniform(*chunk_ms) * SR / 1000) or 1
        parts.append(stream.push(audio[pos : pos + size]))
        pos += size
    parts.append(stream.flush())
    streamed = PreviewMotion.concat(parts)
    assert len(streamed) == len(offline)
    for name in ("jaw", "lip_width", "lip_round", "yaw", "pitch", "roll", "tx", "ty", "scale", "blink"):
        np.testing.assert_array_equal(getattr(streamed, name), getattr(offline, name), err_msg=name)


def test_stream_misuse_is_an_error():
    stream = PreviewMotionStream()
    stream.push(np.zeros(1000, np.float32))
    stream.flush()
    with pytest.raises(FlashTalkError, match="after flush"):
        stream.push(np.zeros(10, np.float32))


def test_motion_deterministic_per_seed_and_seeds_differ():
    audio, _ = speech_like(8.0)
    a, b, c = preview_motion(audio, seed=3), preview_motion(audio, seed=3), preview_motion(audio, seed=4)
    for name in ("jaw", "yaw", "pitch", "roll", "tx", "ty", "scale", "blink"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert np.abs(a.yaw - c.yaw).max() > 0.5  # degrees
    assert not np.array_equal(a.blink > 0.1, c.blink > 0.1)  # blinks at other times
    np.testing.assert_array_equal(a.jaw, c.jaw)  # the mouth follows the audio, not the seed


def test_silence_keeps_mouth_closed_but_head_idles():
    quiet = np.random.default_rng(0).normal(0, 1e-4, 4 * SR).astype(np.float32)
    motion = preview_motion(quiet)
    assert motion.jaw.max() < 0.02 and np.abs(motion.lip_width).max() < 0.02
    assert np.ptp(motion.yaw) > 0.5 and np.ptp(motion.pitch) > 0.3  # gentle idle motion, degrees
    assert np.abs(np.diff(motion.yaw)).max() < 0.5  # smooth: < 0.5 degree per frame


@pytest.mark.parametrize(
    "bad, what",
    [
        (np.zeros(0, np.float32), "empty"),
        (np.zeros((2, 1600), np.float32), "shape"),
        (np.zeros(1600, np.int16), "dtype"),
        (np.full(1600, np.nan, np.float32), "NaN"),
    ],
    ids=["empty", "stereo", "int16", "nan"],
)
def test_bad_audio_raises(bad, what):
    with pytest.raises(FlashTalkError, match=what):
        preview_motion(bad)


def test_bad_fps_raises():
    with pytest.raises(FlashTalkError, match="fps"):
        preview_motion(np.zeros(1600, np.float32), fps=24)


# ---- renderer ----------------------------------------------------------------------------------------
def test_mouth_change_follows_the_audio_envelope(clip):
    rms = frame_rms(clip["audio"], len(clip["motion"]))
    r = np.corrcoef(clip["mouth"], rms)[0, 1]
    assert r >= 0.5, f"Pearson r between mouth-region change and audio RMS is {r:.3f}"


def test_mouth_opens_in_speech_and_closes_in_silence(clip):
    speech, silence = speech_and_silence_frames(clip["bursts"], len(clip["motion"]))
    assert speech.sum() > 50 and silence.sum() > 15
    mouth = clip["mouth"]
    assert np.median(mouth[speech]) > 0.02, "frames barely differ from the source during speech"
    assert mouth[silence].max() < 0.1 * np.median(mouth[speech]), "mouth not (nearly) closed in silence"
    assert clip["motion"].jaw[silence].max() < 0.05


def test_blinks_every_2_to_6_seconds(clip):
    eyes = clip["eyes"]
    assert eyes.max() > 0.05, "no visible blink in 10 s"
    blinks = events(eyes > 0.25 * eyes.max())
    assert len(blinks) >= 2, f"blinks at frames {blinks}"
    lengths = [b - a for a, b in blinks]
    assert all(2 <= n <= 5 for n in lengths), f"blink lengths (frames) {lengths}"
    gaps = np.diff([a for a, _ in blinks]) / FPS
    assert all(1.9 <= g <= 6.2 for g in gaps), f"blink intervals (s) {gaps}"
    between = np.ones(len(eyes), bool)
    for a, b in blinks:
        between[max(a - 1, 0) : b + 1] = False
    assert eyes[between].max() < 0.05 * eyes.max(), "eye region changes outside blinks"


def test_head_moves_smoothly():
    audio, _ = speech_like(2.0, seed=2)
    motion = preview_motion(audio, seed=1)
    crop = portrait()
    _, _, centroid = region_change(PreviewRenderer(crop), motion, crop, len(motion))
    _, _, (source,) = region_change(PreviewRenderer(crop), PreviewMotion.still(1), crop, 1)
    shift = np.linalg.norm(centroid - source, axis=1)
    step = np.linalg.norm(np.diff(centroid, axis=0), axis=1)
    assert shift.max() > 3.0, f"head barely moves: max hair-centroid shift {shift.max():.2f} px"
    assert step.max() < 1.5 and step.max() < 0.25 * np.ptp(centroid, axis=0).max(), (
        f"frame-to-frame jump {step.max():.2f} px"
    )


def test_still_motion_reproduces_the_source():
    crop = portrait()
    frames = PreviewRenderer(crop).render(PreviewMotion.still(2))
    assert (frames - crop).abs().max() < 1e-4


def test_render_deterministic_and_uses_warp2d():
    audio, _ = speech_like(1.0)
    audio = audio[: 9 * HOP]
    crop = portrait()
    first = torch.cat(list(_clip(crop, audio, seed=5).frames(batch_size=4)))
    assert last_choice("warp2d") is not None
    again = torch.cat(list(_clip(crop, audio, seed=5).frames(batch_size=9)))
    other = torch.cat(list(_clip(crop, audio, seed=6).frames(batch_size=9)))
    assert first.shape == (9, 3, 512, 512)
    assert torch.equal(first, again)
    assert (first - other).abs().amax((1, 2, 3)).max() > 0.05


def _clip(crop, audio, seed=0) -> SpeechAnimation:
    """An offline preview clip, driven as `Engine` drives it: the backend interface, one stream."""
    backend = PreviewBackend()
    return SpeechAnimation(backend, backend.encode(crop, None), audio, seed, {})


def test_clip_batches():
    audio, _ = speech_like(1.0)
    audio = audio[: 7 * HOP - 5]
    clip = _clip(portrait(), audio)
    shapes = [tuple(f.shape) for f in clip.frames(batch_size=3)]
    assert shapes == [(3, 3, 512, 512), (3, 3, 512, 512), (1, 3, 512, 512)]
    assert clip.num_frames() == 7


def test_custom_layout_moves_the_mouth():
    layout = FaceLayout(left_eye=(0.37, 0.36), right_eye=(0.63, 0.36), mouth=(0.5, 0.66))
    crop = portrait(layout)
    motion = PreviewMotion.still(1)
    motion.jaw[:] = 1.0
    diff = (PreviewRenderer(crop, layout=layout).render(motion)[0] - crop).abs().mean(0)
    rows = diff.mean(1)
    peak_row = int(rows.argmax())
    assert abs(peak_row / 512 - 0.66) < 0.05, f"mouth change peaks at row {peak_row}"


@pytest.mark.parametrize(
    "bad, what",
    [
        (torch.rand(3, 256, 256), "shape"),
        (torch.rand(512, 512, 3), "shape"),
        (torch.rand(3, 512, 512) * 2, r"\[0, 1\]"),
        (torch.randint(0, 255, (3, 512, 512), dtype=torch.uint8), "dtype"),
        (torch.full((3, 512, 512), float("nan")), "NaN"),
        (np.zeros((3, 512, 512), np.float32), "torch.Tensor"),
    ],
    ids=["small", "hwc", "range", "uint8", "nan", "numpy"],
)
def test_bad_crop_raises(bad, what):
    with pytest.raises(FlashTalkError, match=what):
        PreviewRenderer(bad)


def test_bad_layout_range_and_batch_raise():
    with pytest.raises(FlashTalkError, match="mouth"):
        FaceLayout(mouth=(0.5, 0.3))
    with pytest.raises(FlashTalkError, match="left_eye"):
        FaceLayout(left_eye=(1.2, 0.4))
    renderer = PreviewRenderer(portrait())
    with pytest.raises(FlashTalkError, match="frame range"):
        renderer.render(PreviewMotion.still(3), 2, 5)
    with pytest.raises(FlashTalkError, match="batch_size"):
        next(_clip(portrait(), np.zeros(1600, np.float32)).frames(batch_size=0))
    with pytest.raises(FlashTalkError, match="empty"):
        preview_motion(np.zeros(0, np.float32))


def _dark_centroid(frames: torch.Tensor, rows: slice, threshold: float) -> np.ndarray:
    """Centroid (x, y) in pixels of darkness below threshold (weight threshold - luminance) inside rows."""
    weight = (threshold - frames[:, :, rows].mean(1)).clamp_min(0)
    ys, xs = torch.meshgrid(torch.arange(float(rows.start), float(rows.stop)), torch.arange(512.0), indexing="ij")
    mass = weight.sum((1, 2))
    return torch.stack([(weight * xs).sum((1, 2)) / mass, (weight * ys).sum((1, 2)) / mass], -1).numpy()


def test_pose_semantics_translation_and_3d_yaw():
    crop = portrait()
    renderer = PreviewRenderer(crop)
    motion = PreviewMotion.still(3)
    motion.tx[1] = 0.02  # fraction of the crop width: 10.24 px right
    motion.yaw[2] = 5.0  # degrees: the face turns to the viewer's right
    frames = renderer.render(motion)
    hair = _dark_centroid(frames, HAIR_ROWS, 0.25)
    pupils = _dark_centroid(frames, slice(190, 225), 0.3)
    assert abs(hair[1, 0] - hair[0, 0] - 10.24) < 0.5 and abs(hair[1, 1] - hair[0, 1]) < 0.5
    assert abs(pupils[1, 0] - pupils[0, 0] - 10.24) < 0.5
    hair_shift, pupil_shift = hair[2, 0] - hair[0, 0], pupils[2, 0] - pupils[0, 0]
    # a rotation about a pivot behind the face: the front (pupils) moves further than the edge (hair)
    assert 1.0 < hair_shift < pupil_shift, f"yaw shifts: hair {hair_shift:.2f} px, pupils {pupil_shift:.2f} px"


def test_real_photo_and_speech_from_the_demo_assets():
    """The bundled portrait (squared and resized, no face detection) and eSpeak clip: the mouth region
    follows the speech envelope on a real photo too."""
    import soundfile
    from PIL import Image

    assets = Path(flashtalk.__file__).parent / "assets"
    audio, rate = soundfile.read(assets / "speech.ogg", dtype="float32")
    assert rate == SR and audio.ndim == 1
    audio = audio[: 3 * SR]
    photo = Image.open(assets / "portrait.jpg").convert("RGB")
    width = photo.size[0]
    photo = photo.crop((0, 20, width, 20 + width)).resize((512, 512), Image.BICUBIC)
    crop = torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1).float() / 255
    motion = head_still(preview_motion(audio))
    mouth, _, _ = region_change(PreviewRenderer(crop), motion, crop, len(motion))
    r = np.corrcoef(mouth, frame_rms(audio, len(motion)))[0, 1]
    assert r >= 0.5, f"Pearson r between mouth-region change and speech RMS is {r:.3f}"


def test_triton_warp2d_path_matches_reference(kernel_device):
    """The renderer's grid (a strided view) and broadcast source through the Triton warp2d kernel (the
    interpreter on CPU, compiled on CUDA), one frame."""
    from flashtalk.kernels import use_kernels

    device = kernel_device
    audio, _ = speech_like(0.8)
    motion = preview_motion(audio)
    renderer = PreviewRenderer(portrait(), device=device)
    with use_kernels("reference"):
        expected = renderer.render(motion, 12, 13)
    with use_kernels("triton"):
        actual = renderer.render(motion, 12, 13)
        assert last_choice("warp2d").use_triton
    assert (actual - expected).abs().max() < 1e-5


def test_preview_control_ranges_lie_inside_the_controlset_ranges():
    from flashtalk.controls.control_set import NUMERIC
    from flashtalk.models.preview.controls import PREVIEW_CONTROLS, PREVIEW_LIMITS, check_preview_controls

    assert set(PREVIEW_LIMITS) == set(PREVIEW_CONTROLS)
    for name, (lo, hi) in PREVIEW_LIMITS.items():
        _, c_lo, c_hi = NUMERIC[name]
        assert c_lo <= lo < hi <= c_hi, name
    with pytest.raises(FlashTalkError, match=r"control yaw must be in \[-30, 30\]; got 31"):
        check_preview_controls({"yaw": 31})
