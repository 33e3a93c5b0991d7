"""Motion windows of the network backend: per-stream window state, the window schedule, and THE window
sampler (one batched, graph-capable call for the windows of every stream due in a tick).

A stream's motion is made a window (`n_motions` = W frames) at a time. Its `WindowState` holds the
context the model is conditioned on (the last P committed frames of motion and projected audio, the
learned start tokens at first), the initial noise x_T (the same for every window, as JoyVASA's wrapper),
the pose EMA and the cursor. Two latency modes share everything but the schedule (`plan_windows`):

* `exact`: JoyVASA's own windows: the first starts with LEAD_FRAMES of silence, each commits all of its
  W frames, the next one's context is its last P frames. Offline-identical (golden parity); a frame waits
  for its whole window's audio (up to W - 1 frames of look-ahead).
* `low`: a window starts at the cursor t as soon as the audio of frames up to t + k - 1 + r has arrived;
  its audio is exactly frames t .. t + k + r - 1 (zero-padded to W, as the model's last window), only
  its first k frames are committed, then t += k. Look-ahead (k - 1 + r) frames (defaults: 160 ms).

The schedule depends on sample counts only, never on wall time or on how the audio was chunked. When
frames are due (end of speech, idle silence, stalled audio) the rest is flushed in zero-padded windows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from flashtalk.constants import LATENCY_MODES
from flashtalk.errors import FlashTalkError
from flashtalk.models.joyvasa.pipeline import LEAD_FRAMES, SamplerConfig, sample_window

log = logging.getLogger(__name__)

LOW_COMMIT, LOW_LOOKAHEAD = 4, 1  # low mode defaults: k frames committed per window, r frames of look-ahead
MAX_LOOKAHEAD_MS = 160.0  # what the low-mode defaults must stay within
SAMPLER_MAX_STREAMS = 32  # windows per graphed sampler call (larger batches run in chunks)


@dataclass(frozen=True)
class Latency:
    """A stream's window schedule: `mode` low | exact; k frames committed per window, r frames of audio
    look-ahead past the last committed frame (exact: k = W, r = 0)."""

    mode: str
    k: int
    r: int

    @classmethod
    def resolve(cls, mode: str, window: int, k: int | None = None, r: int | None = None) -> "Latency":
        """Check a latency setting against a window of `window` frames; FlashTalkError names the bad value."""
        if mode not in LATENCY_MODES:
            raise FlashTalkError(f"latency must be one of {', '.join(LATENCY_MODES)}; got {mode!r}")
        if mode == "exact":
            if k is not None or r is not None:
                raise FlashTalkError("commit_frames / lookahead_frames apply to latency 'low' only")
            return cls("exact", window, 0)
        k = LOW_COMMIT if k is None else k
        kmax = window - LEAD_FRAMES
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= kmax:
            raise FlashTalkError(f"commit_frames must be an integer in [1, {kmax}]; got {k!r}")
        r = min(LOW_LOOKAHEAD, kmax - k) if r is None else r
        if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= kmax - k:
            raise FlashTalkError(
                f"lookahead_frames must be an integer in [0, {kmax - k}] with commit_frames {k}; got {r!r}"
            )
        return cls("low", k, r)

    @property
    def lookahead_frames(self) -> int:
        """Frames of audio past a frame's own that it may wait for."""
        return self.k - 1 + self.r


@dataclass
class WindowState:
    """Per-stream state of the window sampler (and of the composition: reference frame, controls)."""

    source: Any  # flashtalk.models.liveportrait.renderer.SourceState of the portrait (shared by its streams)
    seed: int
    latency: Latency
    generator: torch.Generator
    x_T: torch.Tensor  # [1, W, motion_dim]
    prev_motion: torch.Tensor  # [1, P, motion_dim] context
    prev_audio: torch.Tensor  # [1, P, d]
    ema_last: torch.Tensor | None = None  # [1, 7] smoothed pose of the last committed frame
    reference: Any = None  # Motion of d_0, the first generated (silent lead) frame
    lead: int = LEAD_FRAMES  # silent frames still to put before the next window's audio
    frames: int = 0  # output frames committed so far (the cursor)
    controls: Any = None  # flashtalk.controls.control_set.ControlSet
    controls_from: dict = field(default_factory=dict)  # the mapping `controls` was made from


@dataclass(frozen=True)
class Window:
    """One window of one stream: its audio is frames [start, start + audio) of the offered audio, placed
    after `lead` silent frames; it commits `lead + commit` frames (commit of them new, shown)."""

    start: int
    audio: int
    lead: int
    commit: int


def plan_windows(state: WindowState, have: int, due: int, window: int) -> list[Window]:
    """The windows a stream can run now with `have` whole frames of audio offered, `due` of which must be
    made now (see the module docstring). Pure integer code: the same counts give the same windows."""
    lat, used, lead, out = state.latency, 0, state.lead, []
    while used < have:
        commit = min(lat.k - lead, window - lead)
        need = commit + lat.r
        if have - used < need:  # look-ahead incomplete: only frames that are due, zero-padded (audio
            if used >= due:  # past `due` is later speech, whose arrival time must not matter)
                break
            commit = min(commit, due - used)
            need = min(need, due - used)
        out.append(Window(used, min(need, window - lead), lead, commit))
        used, lead = used + commit, 0
    return out


class WindowSampler:
    """THE window sampler: one sampling loop (any sampler, guidance batched) over the windows of B
    streams, through one `GraphRunner` (batch buckets up to SAMPLER_MAX_STREAMS, the device's graph pool)
    when `graphs` (default: on CUDA), eagerly otherwise. Per-step noise of the stochastic samplers is
    drawn from each stream's own generator before the call, so graphed and eager motion are equal. If the
    capture fails it logs why once and samples eagerly from then on. `backend`: the runner's capture
    backend (EagerBackend for CPU tests)."""

    def __init__(
        self,
        model: Any,
        sampler: SamplerConfig,
        *,
        graphs: bool | None = None,
        backend: Any = None,
        max_streams: int = SAMPLER_MAX_STREAMS,
    ) -> None:
        self.model, self.sampler, self.backend, self.max_streams = model, sampler, backend, max_streams
        self.device = next(model.parameters()).device
        self.graphs = self.device.type == "cuda" if graphs is None else graphs
        self.draws = sampler.noise_draws(model.cfg.n_diff_steps)
        self.runner: Any = None
        self.failed: str | None = None

    def _loop(self, audio, prev_motion, prev_audio, x_T, noise=None) -> torch.Tensor:
        z = None if noise is None else noise.transpose(0, 1)  # the runner batches dim 0: [B, draws, ...]
        return sample_window(self.model, self.sampler, audio, prev_motion, prev_audio, x_T, noise=z)

    def noise(self, states: Sequence[WindowState]) -> torch.Tensor | None:
        """[B, draws, W, 70] per-step noise, each stream's from its own generator (None: deterministic)."""
        if not self.draws:
            return None
        x = states[0].x_T
        return torch.cat(
            [
                torch.randn((1, self.draws, *x.shape[1:]), generator=st.generator, device=x.device, dtype=x.dtype)
                for st in states
            ]
        )

    @torch.no_grad()
    def __call__(self, states: Sequence[WindowState], audio: torch.Tensor) -> torch.Tensor:
        """Projected audio [B, W, d] of one window per stream -> normalised motion coef [B, W, 70]."""
        inputs = [
            audio,
            torch.cat([st.prev_motion for st in states]),
            torch.cat([st.prev_audio for st in states]),
            torch.cat([st.x_T for st in states]),
        ]
        noise = self.noise(states)
        if noise is not None:
            inputs.append(noise)
        if self.graphs and self.failed is None and self.runner is None:
            self._capture(inputs)
        if self.runner is None:
            return self._loop(*inputs)
        return self.runner(*inputs)

    def _capture(self, inputs: list[torch.Tensor]) -> None:
        from flashtalk.runtime.graphs import GraphRunner, InputSpec, capture_sizes

        specs = [InputSpec(tuple(t.shape[1:]), t.dtype) for t in inputs]
        runner = GraphRunner(self._loop, specs, capture_sizes(self.max_streams), self.device, backend=self.backend)
        try:
            runner.capture(*inputs)
            self.runner = runner
        except FlashTalkError as exc:
            self.failed = str(exc)
            log.warning("motion sampler: CUDA graph capture failed, sampling eagerly (%s)", exc)
