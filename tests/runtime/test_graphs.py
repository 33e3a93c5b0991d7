"""GraphRunner: bucket / pad / copy / replay / slice logic on the CPU (eager replay backend), and the real
CUDA-graph capture of the fast renderer against eager for every bucket (GPU only)."""

from __future__ import annotations

import pytest
import torch

from flashtalk.errors import FlashTalkError
from flashtalk.runtime.graphs import EagerBackend, GraphRunner, InputSpec
from tests.utils import assert_close


class RecordingBackend(EagerBackend):
    """Eager replay that records which batch sizes were captured, in order, and how often each replays."""

    def __init__(self):
        self.captured: list[int] = []
        self.replays: list[int] = []

    def capture(self, fn):
        replay, out = super().capture(fn)
        b = out.shape[0]
        self.captured.append(b)

        def counted():
            self.replays.append(b)
            replay()

        return counted, out


def _fn(shared: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Row-wise function of a batched input plus a shared one: out[i] = 2·x[i] + shared."""
    return 2 * x + shared


def _runner(buckets=(4, 1, 2), debug=True):
    backend = RecordingBackend()
    specs = [InputSpec((3,), torch.float32, batched=False), InputSpec((3,), torch.float32)]
    return GraphRunner(_fn, specs, buckets, "cpu", backend=backend, debug=debug), backend


def _inputs(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, generator=g), torch.randn(n, 3, generator=g)


def test_buckets_sorted_and_captured_largest_first():
    runner, backend = _runner()
    assert runner.buckets == (1, 2, 4)
    runner.capture(*_inputs(2))
    assert backend.captured == [4, 2, 1]
    assert [runner.bucket_for(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 4]
    with pytest.raises(FlashTalkError, match="exceeds the largest bucket 4"):
        runner.bucket_for(5)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 9])
def test_pad_copy_replay_slice(n):
    runner, backend = _runner()
    runner.capture(*_inputs(4, seed=1))
    shared, x = _inputs(n, seed=2)
    out = runner(shared, x)
    assert out.shape == (n, 3)
    assert_close(out, 2 * x + shared, 1e-6)
    # replays: full chunks of 4, then the bucket of the remainder
    rest = n % 4
    assert backend.replays == [4] * (n // 4) + ([runner.bucket_for(rest)] if rest else [])
    # padding rows repeat the last real row of the last chunk
    b, last = runner.bucket_for(rest or 4), x[-1]
    static_x = runner.static[1]
    for row in range(rest or 4, b):
        assert torch.equal(static_x[row], last)
    # the result is a copy: the next replay must not change it
    before = out.clone()
    runner(*_inputs(n, seed=3))
    assert torch.equal(out, before)


def test_bad_inputs():
    runner, _ = _runner()
    with pytest.raises(FlashTalkError, match="call capture"):
        runner(*_inputs(2))
    runner.capture(*_inputs(2))
    shared, x = _inputs(2)
    with pytest.raises(FlashTalkError, match=r"input 1 must be \[N, 3\]"):
        runner(shared, x[:, :2])
    with pytest.raises(FlashTalkError, match=r"input 0 must be \[3\]"):
        runner(shared[:2], x)
    with pytest.raises(FlashTalkError, match="expected 2 inputs"):
        runner(x)
    with pytest.raises(FlashTalkError, match="empty batch"):
        runner(shared, x[:0])
    with pytest.raises(FlashTalkError, match="buckets must be positive"):
        GraphRunner(_fn, [InputSpec((3,), torch.float32)], (0, 2), "cpu")


def test_capture_failure_is_actionable():
    def broken(shared, x):
        raise RuntimeError("operation not permitted when stream is capturing")

    runner = GraphRunner(
        broken, [InputSpec((3,), torch.float32, batched=False), InputSpec((3,), torch.float32)], (1, 2), "cpu"
    )
    with pytest.raises(FlashTalkError, match="capturing bucket 2 failed.*FLASHTALK_KERNELS=reference"):
        runner.capture(*_inputs(1))


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fast_renderer_graphs_match_eager_every_bucket(precision, monkeypatch):
    """Captured with the compiled Triton kernels inside (spade_norm, the warping ops), not the references."""
    from flashtalk.kernels import last_choice
    from flashtalk.models.liveportrait.optimized import render_frames
    from flashtalk.runtime.graphed_renderer import GraphedRenderer
    from flashtalk.weights.liveportrait import seeded_renderer

    r = seeded_renderer("tiny").cuda()
    src = r.encode_source(torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)).cuda())
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    fr = GraphedRenderer(r, precision, buckets=(1, 2, 4, 8))
    g = torch.Generator(device="cuda").manual_seed(1)
    for n in (1, 2, 3, 4, 5, 8, 11):
        x_d = src.x_s.expand(n, -1, -1) + 0.03 * torch.randn(n, r.num_kp, 3, device="cuda", generator=g)
        graphed = fr.render(src, x_d)
        with torch.no_grad():
            eager = torch.cat([render_frames(fr.model, src.f_s, src.x_s, x_d[i : i + 1]) for i in range(n)])
        assert torch.isfinite(graphed).all()
        assert_close(graphed, eager, 1e-5 if precision == "fp32" else 2e-2)
        for op in ("spade_norm", "dense_motion_input", "deform_warp"):
            assert last_choice(op).backend == "triton", (op, last_choice(op))
