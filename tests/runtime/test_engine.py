"""The Engine (`flashtalk.runtime.engine`) on the weights-free preview and a grey stand-in backend: seeded frames
independent of the batch size, retiming to another output fps, the watermark embedded when its module exists (a
logged warning when not), the preview refusing controls."""

from __future__ import annotations

import sys
import types
from fractions import Fraction
from itertools import islice

import numpy as np
import pytest
import torch

from flashtalk.cli.animate import demo_assets
from flashtalk.errors import FlashTalkError
from flashtalk.runtime.engine import Engine, output_frames, retime
from tests.inputs import _GreyBackend

PORTRAIT, SPEECH = demo_assets()


def test_same_seed_same_frames_other_seed_other_motion(clips, raw_frames):
    engine = Engine.preview("cpu")
    again = np.stack(list(engine.animate(PORTRAIT, clips["short"], seed=0, batch_size=3, watermark=False)))
    assert raw_frames.shape == (10, 512, 512, 3) and raw_frames.dtype == np.uint8
    assert np.array_equal(again, raw_frames)  # also independent of the batch size
    other = np.stack(
        list(islice(engine.animate(PORTRAIT, clips["short"], seed=1, batch_size=5, watermark=False), 5))
    )  # renders one batch only
    assert not np.array_equal(other, raw_frames[:5])


def test_retime_picks_the_frame_shown_at_each_output_time():
    content = [torch.arange(i, min(i + 4, 10)).float() for i in range(0, 10, 4)]  # frames 0..9 in batches
    up = torch.cat(list(retime(iter(content), 25, Fraction(50), output_frames(10, 25, Fraction(50)))))
    assert up.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9]
    down = torch.cat(list(retime(iter(content), 25, Fraction(10), output_frames(10, 25, Fraction(10)))))
    assert down.tolist() == [0, 2, 5, 7]  # output frame j at j/10 s shows content frame floor(j * 2.5)


def test_watermark_is_embedded_when_the_module_exists(clips, tmp_path, monkeypatch):
    calls = []

    def embed(frames, *, key, payload):
        calls.append((frames.shape, frames.dtype, key, payload))
        return frames ^ 1  # flip the lowest bit: visible in the raw frames

    fake = types.ModuleType("flashtalk.provenance.watermark")
    fake.embed = embed
    monkeypatch.setitem(sys.modules, "flashtalk.provenance.watermark", fake)
    clip = Engine(_GreyBackend()).prepare(PORTRAIT, clips["short"], crop="center", watermark_key="k1")
    assert clip.watermark
    frames = np.concatenate(list(clip.batches(5)))
    assert (frames == 128 ^ 1).all()  # 0.5 -> 128, then marked
    assert [c[0][0] for c in calls] == [5, 5, 2]
    assert all(c[1:3] == (torch.uint8, "k1") and c[3].startswith("FlashTalk ") for c in calls)
    calls.clear()
    unmarked = Engine(_GreyBackend()).prepare(PORTRAIT, clips["short"], crop="center", watermark=False)
    assert not unmarked.watermark and (np.concatenate(list(unmarked.batches(5))) == 128).all() and not calls


def test_missing_watermark_module_is_a_logged_warning(clips, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "flashtalk.provenance.watermark", None)  # import fails
    clip = Engine(_GreyBackend()).prepare(PORTRAIT, clips["short"], crop="center")
    assert not clip.watermark
    assert "NOT watermarked" in caplog.text


def test_preview_rejects_controls(clips):
    with pytest.raises(FlashTalkError, match=r"unknown controls \['gaze'\] for the preview backend"):
        Engine.preview("cpu").prepare(PORTRAIT, clips["short"], gaze=(0.1, 0.0))
