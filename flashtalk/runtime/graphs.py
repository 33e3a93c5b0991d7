"""CUDA-graph runner with batch buckets.

    runner = GraphRunner(fn, [InputSpec((1, 32, 16, 64, 64), bf16, batched=False), InputSpec((21, 3), fp32)],
                         buckets=(1, 2, 4, 8), device="cuda")
    runner.capture(f_s, x_s, x_d)        # example inputs fill the static buffers; captures every bucket
    frames = runner(f_s, x_s, x_d)       # any batch N: pad -> copy -> replay -> slice (chunks above the top bucket)

Static input buffers are allocated once at the largest bucket; bucket b runs `fn` on the first b rows of
the batched buffers (shared, unbatched inputs are passed whole). Buckets are sorted and captured largest
first into the device's one memory pool, shared by every runner (smaller graphs reuse the largest one's
memory). `BUCKETS` is the one bucket list; `capture_sizes` picks the ones up to a batch limit. Padding rows repeat the last
real row, so padded work sees valid inputs (no NaN from degenerate keypoints); the output is sliced to N
rows and cloned before the next replay can overwrite it.

The capture backend is injectable: `CudaGraphBackend` (warm-up on a side stream, then
`torch.cuda.graph`) on CUDA, `EagerBackend` (replay = run `fn` again into the same output buffer) for the
CPU, which exercises all the bucket / pad / copy / slice logic without a GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from flashtalk.errors import FlashTalkError

log = logging.getLogger(__name__)

BUCKETS = (1, 2, 4, 8, 16, 32, 64)  # THE batch buckets: graph capture sizes of every runner, render batches


def capture_sizes(max_batch: int | None = None) -> tuple[int, ...]:
    """The batch sizes to capture: `BUCKETS` up to the first one that holds `max_batch` (all by default)."""
    if max_batch is None:
        return BUCKETS
    if max_batch < 1:
        raise FlashTalkError(f"max_batch must be >= 1, got {max_batch}")
    out = tuple(b for b in BUCKETS if b < max_batch)
    return out + (next((b for b in BUCKETS if b >= max_batch), max_batch),)


_POOLS: dict = {}


def graph_pool(device: torch.device):
    """One CUDA-graph memory pool per device, shared by every runner on it (as sglang / vLLM do)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _POOLS:
        _POOLS[index] = torch.cuda.graph_pool_handle()
    return _POOLS[index]


@dataclass(frozen=True)
class InputSpec:
    """One positional input of the captured function: `shape` excludes the batch axis when `batched`."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    batched: bool = True


class CaptureBackend(Protocol):
    def capture(self, fn: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
        """Record `fn` (reading the static inputs) -> (replay, static output that replay refreshes)."""
        ...


class EagerBackend:
    """Replay runs the function again and copies into the captured output buffer (CPU tests, debugging)."""

    def capture(self, fn: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
        out = fn()

        def replay() -> None:
            out.copy_(fn())

        return replay, out


class CudaGraphBackend:
    """torch.cuda.CUDAGraph capture: warm-up runs on a side stream (Triton compiles, cuDNN picks algorithms,
    allocator caches fill), then capture into the device's one memory pool (`graph_pool`)."""

    def __init__(self, warmup: int = 2):
        self.warmup = warmup
        self.pool = None

    def capture(self, fn: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
        if self.pool is None:
            self.pool = graph_pool(torch.device("cuda", torch.cuda.current_device()))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = fn()
        return graph.replay, out


class GraphRunner:
    def __init__(
        self,
        fn: Callable[..., torch.Tensor],
        specs: Sequence[InputSpec],
        buckets: Sequence[int],
        device: torch.device | str,
        backend: CaptureBackend | None = None,
        debug: bool = False,
    ):
        if not specs or not any(s.batched for s in specs):
            raise FlashTalkError("GraphRunner: needs at least one batched input")
        if not buckets or any(int(b) != b or b < 1 for b in buckets):
            raise FlashTalkError(f"GraphRunner: buckets must be positive integers, got {tuple(buckets)}")
        self.fn, self.specs, self.debug = fn, tuple(specs), debug
        self.buckets = tuple(sorted(set(int(b) for b in buckets)))
        self.device = torch.device(device)
        self.backend = (
            backend if backend is not None else (CudaGraphBackend() if self.device.type == "cuda" else EagerBackend())
        )
        top = self.buckets[-1]
        self.static = [
            torch.zeros((top, *s.shape) if s.batched else s.shape, dtype=s.dtype, device=self.device)
            for s in self.specs
        ]
        self._addresses = [t.data_ptr() for t in self.static]
        self._graphs: dict[int, tuple[Callable[[], None], torch.Tensor]] = {}

    @property
    def max_batch(self) -> int:
        return self.buckets[-1]

    def bucket_for(self, n: int) -> int:
        """The smallest bucket that holds n rows (n <= max_batch)."""
        for b in self.buckets:
            if b >= n:
                return b
        raise FlashTalkError(f"GraphRunner: batch {n} exceeds the largest bucket {self.max_batch}")

    def _views(self, b: int) -> list[torch.Tensor]:
        return [t[:b] if s.batched else t for t, s in zip(self.static, self.specs)]

    def _check(self, inputs: Sequence[torch.Tensor]) -> int:
        if len(inputs) != len(self.specs):
            raise FlashTalkError(f"GraphRunner: expected {len(self.specs)} inputs, got {len(inputs)}")
        n = None
        for i, (t, s) in enumerate(zip(inputs, self.specs)):
            if not torch.is_tensor(t):
                raise FlashTalkError(f"GraphRunner: input {i} must be a torch.Tensor, got {type(t).__name__}")
            tail = tuple(t.shape[1:]) if s.batched else tuple(t.shape)
            if tail != s.shape or (s.batched and t.dim() != len(s.shape) + 1):
                want = f"[N, {', '.join(map(str, s.shape))}]" if s.batched else str(list(s.shape))
                raise FlashTalkError(f"GraphRunner: input {i} must be {want}, got {tuple(t.shape)}")
            if s.batched:
                if n is not None and t.shape[0] != n:
                    raise FlashTalkError(f"GraphRunner: batched inputs disagree on N ({n} vs {t.shape[0]})")
                n = t.shape[0]
        if n == 0:
            raise FlashTalkError("GraphRunner: empty batch")
        return n

    def _fill(self, inputs: Sequence[torch.Tensor], n: int, b: int) -> None:
        """Copy the inputs into the static buffers; rows n..b-1 repeat row n-1 (padding)."""
        for t, s, buf in zip(inputs, self.specs, self.static):
            if not s.batched:
                if t.data_ptr() != buf.data_ptr():
                    buf.copy_(t)
                continue
            buf[:n].copy_(t)
            if b > n:
                buf[n:b].copy_(buf[n - 1 : n].expand(b - n, *s.shape))

    def capture(self, *example: torch.Tensor) -> None:
        """Fill the static buffers from example inputs (any N >= 1) and capture every bucket, largest first."""
        n = self._check(example)
        top = self.max_batch
        self._fill([t[:top] if s.batched else t for t, s in zip(example, self.specs)], min(n, top), top)
        for b in reversed(self.buckets):
            try:
                self._graphs[b] = self.backend.capture(lambda b=b: self.fn(*self._views(b)))
            except Exception as e:
                raise FlashTalkError(
                    f"GraphRunner: capturing bucket {b} failed ({type(e).__name__}: {e}). The captured function "
                    "must not synchronise with the host (.item(), .cpu(), printing tensors) nor allocate pinned "
                    "memory; kernels must be compiled and tuned before capture (the warm-up does this); to "
                    "isolate a kernel, retry with FLASHTALK_KERNELS=reference"
                ) from e
        log.info("captured %d buckets %s on %s", len(self.buckets), self.buckets, self.device)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if not self._graphs:
            raise FlashTalkError("GraphRunner: call capture(example inputs) before running")
        n = self._check(inputs)
        if n > self.max_batch:
            outs = []
            for start in range(0, n, self.max_batch):
                outs.append(
                    self(*[t[start : start + self.max_batch] if s.batched else t for t, s in zip(inputs, self.specs)])
                )
            return torch.cat(outs)
        if self.debug:
            moved = [i for i, (t, a) in enumerate(zip(self.static, self._addresses)) if t.data_ptr() != a]
            assert not moved, f"static input buffers {moved} changed address since capture"
        b = self.bucket_for(n)
        self._fill(inputs, n, b)
        replay, out = self._graphs[b]
        replay()
        return out[:n].clone()
