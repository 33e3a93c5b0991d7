"""The network streaming backend (tiny preset, seeded weights, fp32, CPU): streamed motion equals the offline
`NetworkBackend`, sessions batch into one sampler call and one render call, and a live session keeps its
frames in order through controls, an interrupt and stalled audio."""

import numpy as np
import pytest
import torch

from flashtalk.constants import HOP
from flashtalk.errors import FlashTalkError
from flashtalk.runtime.animation import SpeechAnimation
from flashtalk.runtime.backends import encode_portrait
from flashtalk.runtime.backends.network import NetworkBackend
from flashtalk.runtime.scheduler import Scheduler
from flashtalk.runtime.session import STALL_FLUSH_S, Event, Frame, Session
from flashtalk.weights.bundle import seeded_networks
from tests.utils import TOLERANCES, assert_close, speech_keypoints


@pytest.fixture(scope="module")
def nets():
    return seeded_networks("tiny")


@pytest.fixture(scope="module")
def backend(nets):
    return NetworkBackend(nets, "cpu", seeded=True)


def photo(seed: int) -> np.ndarray:
    """A 512² RGB image: smooth colour ramps plus noise (not a face; the crop is the centre)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:512, 0:512] / 511.0
    base = np.stack([x, y, (x + y) / 2], -1) if seed % 2 else np.stack([1 - y, x * y, 1 - x], -1)
    return np.clip(base * 220 + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def portraits(backend):
    return [encode_portrait(backend, photo(i), crop="center") for i in (1, 2)]


def speech(frames: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(frames * HOP) / 16000
    return (0.3 * np.sin(2 * np.pi * 180 * t) * np.sin(2 * np.pi * 3 * t) + 0.05 * rng.standard_normal(t.shape)).astype(
        np.float32
    )


def crop_tensor(portrait) -> torch.Tensor:
    return torch.from_numpy(portrait.crop).permute(2, 0, 1).float().div(255)


def offline_keypoints(nets, portrait, audio, seed, controls=None) -> torch.Tensor:
    backend = NetworkBackend(nets, torch.device("cpu"), seeded=True)
    source = backend.encode(crop_tensor(portrait))
    anim = SpeechAnimation(backend, source, audio, seed, backend.clip_controls(source, controls or {}))
    return speech_keypoints(anim)


def test_streamed_motion_matches_offline_and_batches_sessions(nets, backend, portraits):
    calls = []
    guided = nets.motion.guided_x0_fn

    def spy(audio, *args):
        calls.append(audio.shape[0])
        return guided(audio, *args)

    nets.motion.guided_x0_fn = spy
    try:
        audios = [speech(23, 1), speech(17, 2)]
        streams = [backend.open(p.state, seed=s) for p, s in zip(portraits, (3, 4))]
        ready = [np.zeros(0, np.float32)] * 2
        keypoints = [[], []]
        cuts = [0, 3, 9, 16, 23]  # chunks as a client sends them; the last request flushes (end of speech)
        for a, b in zip(cuts, cuts[1:]):
            last = b == cuts[-1]
            ready = [np.concatenate([r, au[a * HOP : b * HOP]]) for r, au in zip(ready, audios)]
            items = [(st, r, {}, len(r) // HOP if last else 0) for st, r in zip(streams, ready)]
            made = backend.motion(items)
            for k, m in enumerate(made):
                assert len(m) <= len(ready[k]) // HOP
                ready[k] = ready[k][len(m) * HOP :]
                if len(m):
                    keypoints[k].append(backend.driving_keypoints(streams[k], m))
            if not last:
                assert all(len(r) // HOP < nets.motion.cfg.n_motions for r in ready)  # held back: < a window
        assert all(len(r) == 0 for r in ready)
    finally:
        nets.motion.guided_x0_fn = guided
    assert 2 in calls  # windows of both sessions went through one sampler call
    for k, (p, audio, seed) in enumerate(zip(portraits, audios, (3, 4))):
        streamed = torch.cat(keypoints[k])
        expected = offline_keypoints(nets, p, audio, seed)
        assert streamed.shape[0] == len(audio) // HOP  # offline adds one frame of trailing silence
        torch.testing.assert_close(streamed, expected[: len(streamed)], atol=1e-5, rtol=1e-5)


def test_two_portraits_render_in_one_call_like_alone(nets, portraits):
    backend = NetworkBackend(nets, "cpu", seeded=True, pad_to_bucket=True)
    batches = []
    hook = nets.renderer.warping_module.register_forward_pre_hook(
        lambda mod, args, kwargs: batches.append(args[0].shape[0]), with_kwargs=True
    )
    try:
        streams = [backend.open(p.state, seed=s) for p, s in zip(portraits, (5, 6))]
        motions = backend.motion([(st, speech(1, 7 + i), {}, 1) for i, st in enumerate(streams)])
        assert [len(m) for m in motions] == [1, 1]
        images = backend.render([(st, [m]) for st, m in zip(streams, motions)], bucket=3)
    finally:
        hook.remove()
    assert batches == [3]  # both portraits (+ one padding frame) in one warping + decoder call
    assert images.shape == (2, 3, 512, 512)
    alone = NetworkBackend(nets, torch.device("cpu"), seeded=True)
    for i, (st, m) in enumerate(zip(streams, motions)):
        expected = alone.render_keypoints(st.source.f_s, st.source.x_s, backend.driving_keypoints(st, m))
        assert_close(images[i : i + 1], expected, *TOLERANCES[torch.float32])  # batch 3 vs 1: fp32 rounding
    assert (images[0] - images[1]).abs().max() > 0.05  # the two portraits really differ


def test_session_in_order_with_controls_interrupt_and_stall(nets, portraits):
    backend = NetworkBackend(nets, "cpu", seeded=True)
    seen = []
    compose = backend.driving_keypoints
    backend.driving_keypoints = lambda st, m: seen.append((m.frames.tolist(), compose(st, m))) or seen[-1][1]
    now = [100.0]
    clock = lambda: now[0]  # noqa: E731
    scheduler = Scheduler(backend, buckets=(1, 2), clock=clock)
    session = Session(
        backend,
        portraits[0],
        seed=9,
        sample_rate=16000,
        sample_format="f32le",
        idle=False,
        watermark=False,
        clock=clock,
    )
    scheduler.admit(session)
    assert session.lookahead_s == pytest.approx((nets.motion.cfg.n_motions - 1) / 25)
    with pytest.raises(FlashTalkError, match="unknown controls"):
        session.set_controls({"tilt": 3})
    out = []
    audio = speech(4, 11)
    session.push_audio(audio)
    session.end_speech()
    scheduler.step()  # motion of all 4 frames (end of speech), frames 0-1 rendered
    out += session.poll()
    session.set_controls({"yaw": 15.0})
    now[0] += 0.04
    scheduler.step()  # frames 2-3, with the yaw offset
    out += session.poll()
    plain = offline_keypoints(nets, portraits[0], audio, 9)
    turned = offline_keypoints(nets, portraits[0], audio, 9, {"yaw": 15.0})
    kp = {f: k for frames, keys in seen for f, k in zip(frames, keys)}
    torch.testing.assert_close(torch.stack([kp[0], kp[1]]), plain[:2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.stack([kp[2], kp[3]]), turned[2:4], atol=1e-5, rtol=1e-5)
    assert (turned[2:4] - plain[2:4]).abs().max() > 1e-2

    session.push_audio(speech(3, 12))  # less than a window, no end: held back for the look-ahead
    scheduler.step()
    assert not [x for x in session.poll() if isinstance(x, Frame)]
    session.interrupt()  # drops the held audio
    session.push_audio(speech(1, 13))
    scheduler.step()
    assert not [x for x in session.poll() if isinstance(x, Frame)]
    now[0] += STALL_FLUSH_S  # no audio for STALL_FLUSH_S: the waiting frame is made (zero-padded window)
    scheduler.step()
    out += session.poll()

    frames = [x for x in out if isinstance(x, Frame)]
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert all(b.pts > a.pts for a, b in zip(frames, frames[1:]))
    assert [f.epoch for f in frames] == [0, 0, 0, 0, 1]
    assert all(f.image.shape == (512, 512, 3) and f.image.std() > 1 and not f.idle for f in frames)
    np.testing.assert_array_equal(np.concatenate([f.audio for f in frames[:4]]), audio)
    events = [x.kind for x in out if isinstance(x, Event)]
    assert events == ["end"]
    assert scheduler.stats.max_render_sessions == 1 and scheduler.stats.bucket_counts == {2: 2, 1: 1}


def test_network_controls_are_checked(backend):
    assert backend.check_controls({"yaw": 10, "auto_blink": True, "eye_open": None}) == {
        "yaw": 10.0,
        "auto_blink": True,
        "eye_open": None,
    }
    with pytest.raises(FlashTalkError, match="yaw"):
        backend.check_controls({"yaw": 200})
    with pytest.raises(FlashTalkError, match="not a file name"):
        backend.check_controls({"emotion": "/etc/passwd"})
    with pytest.raises(FlashTalkError, match="unknown controls"):
        backend.check_controls({"controls": "tracks.json"})
