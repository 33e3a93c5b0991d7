"""`GraphedRenderer`: the renderer fast path (`flashtalk.models.liveportrait.optimized`) run through a CUDA-graph runner with
batch buckets on CUDA, eagerly elsewhere.

    frames = GraphedRenderer(renderer, "bf16").render(source, x_d)
"""

from __future__ import annotations

import torch

from flashtalk.errors import FlashTalkError
from flashtalk.models.liveportrait.optimized import optimize_renderer, render_frames
from flashtalk.models.liveportrait.renderer import Renderer, SourceState
from flashtalk.runtime.graphs import BUCKETS


class GraphedRenderer:
    """`Renderer.render` on the fast path: an `optimize_renderer` copy, run through a CUDA-graph runner with
    batch buckets on CUDA (stitching included in the graph), eagerly elsewhere. Frames are fp32."""

    def __init__(
        self,
        renderer: Renderer,
        precision: str = "bf16",
        buckets: tuple[int, ...] = BUCKETS,
        graphs: bool | None = None,
        channels_last: bool = True,
    ):
        self.renderer = renderer
        self.model = optimize_renderer(renderer, precision, channels_last=channels_last)
        self.device = next(renderer.parameters()).device
        self.graphs = self.device.type == "cuda" if graphs is None else graphs
        self.buckets = buckets
        self._runner = None

    def _make_runner(self, f_s: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor):
        from flashtalk.runtime.graphs import GraphRunner, InputSpec

        specs = [InputSpec(tuple(t.shape[1:]), t.dtype) for t in (f_s, x_s, x_d)]
        runner = GraphRunner(lambda f, s, d: render_frames(self.model, f, s, d), specs, self.buckets, self.device)
        with torch.no_grad():
            runner.capture(f_s, x_s, x_d)
        return runner

    @torch.no_grad()
    def render(self, source: SourceState, x_d: torch.Tensor, stitching: bool = True) -> torch.Tensor:
        """Same contract as Renderer.render: x_d [N, K, 3] -> RGB [N, 3, 8h, 8w] in [0, 1] (fp32)."""
        if source.f_s.shape[0] != 1:
            raise FlashTalkError(f"render: expected one source (batch 1), got a batch of {source.f_s.shape[0]}")
        return self.render_gathered(source.f_s, source.x_s, x_d, stitching)

    @torch.no_grad()
    def render_gathered(
        self, f_s: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor, stitching: bool = True
    ) -> torch.Tensor:
        """Frames of per-frame sources (f_s [1 or N, C, D, H, W], x_s [1 or N, K, 3]; frames of several
        portraits in one call) and driving keypoints x_d [N, K, 3] -> [N, 3, 8h, 8w] fp32. On CUDA through
        the graph runner (per-frame f_s in its static buffers), eagerly elsewhere."""
        k = self.renderer.num_kp
        if not torch.is_tensor(x_d) or x_d.ndim != 3 or tuple(x_d.shape[1:]) != (k, 3) or x_d.shape[0] == 0:
            shape = tuple(x_d.shape) if torch.is_tensor(x_d) else type(x_d).__name__
            raise FlashTalkError(f"render: x_d must be driving keypoints [N, {k}, 3], got {shape}")
        n = x_d.shape[0]
        x_d = x_d.to(self.device, torch.float32)
        x_s = x_s.to(self.device, torch.float32)
        f_s = f_s.to(self.device)
        if not (self.graphs and stitching):
            return render_frames(self.model, f_s, x_s, x_d, stitching)
        f_s, x_s = f_s.expand(n, *f_s.shape[1:]), x_s.expand(n, -1, -1)
        if self._runner is None or self._runner.specs[0].shape != tuple(f_s.shape[1:]):
            self._runner = self._make_runner(f_s, x_s, x_d)
        return self._runner(f_s, x_s, x_d)
