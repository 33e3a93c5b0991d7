"""The many-clip driver (`flashtalk.runtime.batch.render_clips`) on the preview: several clips' render
batches share one `backend.render` call at a bucket of the one bucket list, each clip's frames are exactly
`Clip.batches`' (animate's), and a clip whose motion fails fails alone, leaving no file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flashtalk.cli.animate import demo_assets
from flashtalk.errors import FlashTalkError
from flashtalk.runtime.batch import ClipRequest, PackOptions, render_clips
from flashtalk.runtime.engine import Engine
from flashtalk.runtime.graphs import capture_sizes
from tests.utils import decode_video, speech_excerpts

PORTRAIT = demo_assets()[0]


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return speech_excerpts(tmp_path_factory.mktemp("speech"), {"a": 0.4, "b": 0.5, "c": 0.3})


def _requests(speech, out, **per_clip):
    fps = per_clip.get("fps", {})
    return [
        ClipRequest(name, PORTRAIT, path, out / f"{name}.mp4", seed=k, fps=fps.get(name, 25.0))
        for k, (name, path) in enumerate(speech.items())
    ]


def test_clips_share_render_calls_and_keep_animates_frames(speech, tmp_path, monkeypatch):
    engine = Engine.preview("cpu")
    calls = []
    render = engine.backend.render

    def recording(items, bucket):
        calls.append(([id(stream) for stream, _ in items], sum(len(c) for _, cs in items for c in cs), bucket))
        return render(items, bucket)

    monkeypatch.setattr(engine.backend, "render", recording)
    requests = _requests(speech, tmp_path, fps={"b": 30.0, "c": 12.5})
    results = {r.request.key: r for r in render_clips(engine, requests, PackOptions(batch_size=4, max_batch=16))}
    assert all(r.error is None for r in results.values()), results
    assert any(len(set(streams)) > 1 for streams, _, _ in calls)  # clips packed together
    for _, frames, bucket in calls:
        assert frames <= 16 and bucket in capture_sizes(16) and bucket >= frames
    monkeypatch.undo()
    for r in requests:
        clip = engine.prepare(r.portrait, r.audio, seed=r.seed, fps=r.fps)
        want = np.concatenate(list(clip.batches(4)))
        got, _ = decode_video(r.output)
        assert results[r.key].frames == len(want) == len(got)
        # the same uint8 frames went to the encoder: re-encode animate's to compare like with like
        from flashtalk.runtime.offline import render as write

        write(clip, tmp_path / f"ref-{r.key}.mp4", batch_size=4, progress=False)
        assert np.array_equal(got, decode_video(tmp_path / f"ref-{r.key}.mp4")[0]), r.key


def test_a_clip_whose_motion_fails_fails_alone(speech, tmp_path, monkeypatch):
    engine = Engine.preview("cpu")
    opened, open_, motion = [], engine.backend.open, engine.backend.motion

    def opening(portrait, **kw):
        opened.append(open_(portrait, **kw))
        return opened[-1]

    def failing(items):
        if len(opened) > 1 and any(s is opened[1] for s, *_ in items):  # the second clip (clips open in order)
            raise FlashTalkError("motion exploded")
        return motion(items)

    monkeypatch.setattr(engine.backend, "open", opening)
    monkeypatch.setattr(engine.backend, "motion", failing)
    requests = _requests(speech, tmp_path)
    results = {r.request.key: r for r in render_clips(engine, requests, PackOptions(batch_size=4, max_batch=8))}
    assert results["b"].error == "motion exploded"
    assert results["a"].error is None and results["c"].error is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "c.mp4"]  # b's temporary is gone


def test_bad_pack_options_are_refused():
    with pytest.raises(FlashTalkError, match="max_batch"):
        PackOptions(batch_size=16, max_batch=8).check()
    with pytest.raises(FlashTalkError, match="loaders must be a positive integer"):
        PackOptions(loaders=0).check()


@pytest.mark.slow
def test_network_clips_packed_together_match_animate_up_to_rebatching(tmp_path, monkeypatch):
    """The seeded tiny network: two clips share render calls. Rows are independent, but a renderer batch of
    another size may round differently (tests/utils.py, REBATCH: ~1e-6 here), which can move a pixel by one
    level at the uint8 rounding and the watermark's activity estimate by as little: within 2 levels, on a
    small fraction of the pixels. The frames are compared as handed to the encoder (H.264 would spread a
    one-level change over a block)."""
    import flashtalk.runtime.batch as batch_module

    made: dict[str, list] = {}

    def recording_sink(clip, path):
        frames: list = []
        made[Path(path).name.split(".partial-")[0].lstrip(".")] = frames

        class Sink:
            frames_written = 0

            def write(self, batch):
                frames.append(np.array(batch))
                self.frames_written += len(batch)

            def close(self):
                pass

            def abort(self):
                pass

        return Sink()

    monkeypatch.setattr(batch_module, "open_sink", recording_sink)
    engine = Engine.from_weights(None, seeded=True, preset="tiny", device="cpu")
    speech = speech_excerpts(tmp_path, {"a": 0.12, "b": 0.16})
    requests = [
        ClipRequest(k, PORTRAIT, path, tmp_path / f"{k}.mp4", seed=n, controls={"auto_blink": True})
        for n, (k, path) in enumerate(speech.items())
    ]
    results = list(render_clips(engine, requests, PackOptions(batch_size=2, max_batch=8)))
    assert all(r.error is None for r in results), results
    for r in requests:
        clip = engine.prepare(r.portrait, r.audio, seed=r.seed, auto_blink=True)
        want = np.concatenate(list(clip.batches(2))).astype(int)
        got = np.concatenate(made[f"{r.key}.mp4"])
        assert got.shape == want.shape
        diff = np.abs(got - want)
        assert diff.max() <= 2 and (diff > 0).mean() < 1e-3, (r.key, diff.max(), (diff > 0).mean())
