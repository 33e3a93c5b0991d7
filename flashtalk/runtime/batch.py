"""The many-clip offline driver: the frames of several clips packed into each `backend.render` call.

    requests = [ClipRequest("a", Path("a.jpg"), Path("a.wav"), Path("out/a.mp4")), ...]
    for result in render_clips(engine, requests):   # ClipResult per clip, as each ends (done or failed)
        print(result.request.key, result.error or f"{result.frames} frames")

The steps, over a stream of clip requests (the same backend calls as `animate`'s one-stream driver,
`flashtalk.runtime.animation.SpeechAnimation`, and the same finish step as every frame):
1. load: decode the photo and the speech and crop the face (`Engine.load`) in worker threads, a bounded
   number of clips ahead of the renderer;
2. prepare, on the compute thread: encode the portrait and check the controls (`Engine.prepare_loaded`),
   open the output atomically (`flashtalk.io.media.atomic_output`) and its writer thread;
3. pack: each open clip's motion (its own `backend.motion` calls, offered as `animate` offers them) is cut
   into the render batches `animate` makes (`batch_size` frames, the last shorter); whole batches of
   several clips fill one `backend.render` call of up to `max_batch` frames at the smallest bucket that
   holds them (`flashtalk.runtime.graphs.capture_sizes`), the oldest clip first, so short clips still fill it;
4. finish (`flashtalk.runtime.finish`: uint8 and watermark, one call for the crops of all the clips in the
   call, pasted-back clips each), and the frames go to each clip's writer thread (a bounded queue: encoding
   overlaps the compute);
5. a clip with all its frames written is committed; a clip that fails (bad input, no face, a bad option,
   a backend error) is removed with its one-line error, and the others go on.
A clip's frames are the frames `animate` makes for the same inputs and options.
"""

from __future__ import annotations

import bisect
import collections
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from flashtalk.errors import FlashTalkError
from flashtalk.io.media import atomic_output, raise_if_signalled, terminate_raises
from flashtalk.runtime.animation import batches, select_rows
from flashtalk.runtime.engine import Clip, Engine, Inputs
from flashtalk.runtime.finish import finish
from flashtalk.runtime.graphs import capture_sizes
from flashtalk.runtime.offline import FrameWriter, open_sink


@dataclass(frozen=True)
class ClipRequest:
    """One clip: its inputs and the options of `Engine.prepare`, and where the MP4 goes."""

    key: str  # names the clip in its result
    portrait: Path
    audio: Path
    output: Path
    crop: Any = "auto"
    seed: int = 0
    fps: float = 25.0
    paste_back: bool = False
    controls: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClipResult:
    request: ClipRequest
    frames: int = 0
    seconds: float = 0.0  # from the clip's start of rendering to its committed output
    error: str | None = None  # one line; None when the output was written


@dataclass(frozen=True)
class PackOptions:
    batch_size: int = 16  # frames per render batch of one clip (`animate --batch-size`)
    max_batch: int = 64  # frames per render call, several clips' batches together
    loaders: int = 2  # worker threads that load (decode, crop) clips ahead of the renderer
    ahead: int = 4  # clips loaded ahead at most
    queue_batches: int = 2  # frame batches waiting per clip's writer thread at most
    watermark: bool = True
    overwrite: bool = False

    def check(self) -> None:
        for name in ("batch_size", "max_batch", "loaders", "ahead", "queue_batches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FlashTalkError(f"{name} must be a positive integer; got {value!r}")
        if self.max_batch < self.batch_size:
            raise FlashTalkError(f"max_batch ({self.max_batch}) must be >= batch_size ({self.batch_size})")


DEFAULT_OPTIONS = PackOptions()


def one_line(exc: BaseException) -> str:
    """An error as one line: a FlashTalkError's own message, anything else with its type."""
    text = str(exc) if isinstance(exc, FlashTalkError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split()) or type(exc).__name__


class _Open:
    """A clip being rendered: its render batches (motion chunks) in order, its output and writer."""

    def __init__(self, request: ClipRequest, clip: Clip, options: PackOptions) -> None:
        self.request, self.clip, self.start = request, clip, time.perf_counter()
        anim = clip.animation
        motion = anim.motion()
        content = Fraction(clip.engine.backend.fps)
        self.counts: np.ndarray | None = None  # output frames per content frame, at a higher output rate
        if content > clip.fps:  # a lower output rate: only the content frames shown are rendered
            motion = select_rows(motion, clip.shown_frames())
        elif content < clip.fps:
            self.counts = np.bincount(clip.shown_frames(), minlength=anim.num_frames())
        self.units = batches(motion, options.batch_size, lambda chunk: chunk)
        self.next: Any = None
        self.exhausted = False
        self.row = 0  # content frames rendered so far
        self.output = atomic_output(request.output, overwrite=options.overwrite)
        tmp = self.output.__enter__()
        try:
            self.writer = FrameWriter(open_sink(clip, tmp), options.queue_batches)
            self.writer.start()
        except BaseException as exc:
            self.output.__exit__(type(exc), exc, exc.__traceback__)
            raise

    def peek(self) -> Any:
        """The next render batch's motion (computed now if need be), or None after the last."""
        if self.next is None and not self.exhausted:
            self.next = next(self.units, None)
            self.exhausted = self.next is None
        return self.next

    def expand(self, frames: Any) -> Any:
        """Rendered content frames -> output frames (each repeated as often as it is shown)."""
        if self.counts is None:
            return frames
        import torch

        counts = torch.as_tensor(self.counts[self.row : self.row + len(frames)], device=frames.device)
        self.row += len(frames)
        return frames.repeat_interleave(counts, dim=0)

    def commit(self) -> ClipResult:
        """Close the writer and move the output into place (on an error it is removed)."""
        try:
            frames = self.writer.finish(self.clip)
        except BaseException as exc:
            self.output.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self.output.__exit__(None, None, None)
        return ClipResult(self.request, frames, time.perf_counter() - self.start)

    def discard(self, exc: BaseException) -> None:
        """Stop the writer and remove the temporary output."""
        self.writer.abandon()
        self.output.__exit__(type(exc), exc, exc.__traceback__)


def _loaded(
    engine: Engine, requests: Iterable[ClipRequest], options: PackOptions
) -> Iterator[tuple[ClipRequest, Inputs | BaseException]]:
    """Each request with its loaded inputs (or the error), in order; loading runs `ahead` clips ahead."""
    import cv2  # noqa: F401  (imported once here: two threads importing it at once can see it half-made)

    pool = ThreadPoolExecutor(options.loaders, thread_name_prefix="flashtalk-load")
    pending: collections.deque[tuple[ClipRequest, Future]] = collections.deque()

    def result(item: tuple[ClipRequest, Future]) -> tuple[ClipRequest, Inputs | BaseException]:
        request, future = item
        try:
            return request, future.result()
        except Exception as exc:  # reported as the clip's failure
            return request, exc

    try:
        for r in requests:
            pending.append((r, pool.submit(engine.load, r.portrait, r.audio, crop=r.crop, fps=r.fps)))
            if len(pending) >= options.ahead:
                yield result(pending.popleft())
        while pending:
            yield result(pending.popleft())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def render_clips(
    engine: Engine,
    requests: Iterable[ClipRequest],
    options: PackOptions = DEFAULT_OPTIONS,
    *,
    on_frames: Callable[[int], None] | None = None,
) -> Iterator[ClipResult]:
    """Render every request (see the module docstring); yields each clip's result as it ends.
    `on_frames(n)`: called with the frames written by each render call (a progress bar)."""
    options.check()
    backend = engine.backend
    buckets = capture_sizes(options.max_batch)
    loaded = _loaded(engine, requests, options)
    open_: list[_Open] = []
    ended: list[ClipResult] = []

    def fail(o: _Open, exc: BaseException) -> None:
        open_.remove(o)
        o.discard(exc)
        ended.append(ClipResult(o.request, 0, time.perf_counter() - o.start, one_line(exc)))

    def take(o: _Open, plan: list, room: int) -> int:
        """Plan o's next render batches that fit in `room` frames; the room left."""
        try:
            while (unit := o.peek()) is not None and len(unit) <= room:
                plan.append((o, unit))
                o.next = None
                room -= len(unit)
        except Exception as exc:  # its motion failed: this clip only
            plan[:] = [p for p in plan if p[0] is not o]
            fail(o, exc)
        return room

    def open_next() -> _Open | None:
        """Prepare the next loaded clip and open its output; None when there is none left."""
        for request, inputs in loaded:
            try:
                if isinstance(inputs, BaseException):
                    raise inputs
                clip = engine.prepare_loaded(
                    inputs,
                    seed=request.seed,
                    paste_back=request.paste_back,
                    watermark=options.watermark,
                    **request.controls,
                )
                o = _Open(request, clip, options)
            except Exception as exc:
                ended.append(ClipResult(request, error=one_line(exc)))
                continue
            open_.append(o)
            return o
        return None

    with terminate_raises():
        try:
            more = True
            while True:
                raise_if_signalled()
                plan: list[tuple[_Open, Any]] = []
                room = options.max_batch
                for o in list(open_):
                    room = take(o, plan, room)
                while more and room > 0:
                    o = open_next()
                    if o is None:
                        more = False
                        break
                    before = len(plan)
                    room = take(o, plan, room)
                    if len(plan) == before and o in open_ and not o.exhausted:
                        break  # its first batch does not fit: it leads the next call
                if plan:
                    _render(backend, buckets, plan, fail, on_frames)
                for o in list(open_):
                    if o.exhausted:
                        open_.remove(o)
                        try:
                            ended.append(o.commit())
                        except Exception as exc:
                            ended.append(ClipResult(o.request, 0, time.perf_counter() - o.start, one_line(exc)))
                yield from ended
                ended.clear()
                if not plan and not open_ and not more:
                    return
        except BaseException as exc:
            for o in open_:
                o.discard(exc)
            raise
        finally:
            loaded.close()


def _render(
    backend: Any,
    buckets: tuple[int, ...],
    plan: list[tuple[_Open, Any]],
    fail: Callable[[_Open, BaseException], None],
    on_frames: Callable[[int], None] | None,
) -> None:
    """One render call for the planned batches; finish them; hand each clip its frames."""
    import torch

    count = sum(len(unit) for _, unit in plan)
    bucket = buckets[min(bisect.bisect_left(buckets, count), len(buckets) - 1)]
    clips = list(dict.fromkeys(o for o, _ in plan))  # in order, once each
    try:
        images = backend.render([(o.clip.animation.stream, [unit]) for o, unit in plan], bucket)
        pieces: dict[_Open, list] = {o: [] for o in clips}
        row = 0
        for o, unit in plan:
            pieces[o].append(o.expand(images[row : row + len(unit)]))
            row += len(unit)
        frames = {o: torch.cat(pieces[o]) for o in clips}
        crops = [o for o in clips if not o.clip.paste_back]
        out: dict[_Open, np.ndarray] = {}
        if crops:
            spans, start = [], 0
            for o in crops:
                spans.append((start, len(frames[o]), o.clip.mark))
                start += len(frames[o])
            pixels = finish(torch.cat([frames[o] for o in crops]), spans)
            out.update({o: pixels[a : a + n] for o, (a, n, _) in zip(crops, spans)})
        for o in clips:
            if o.clip.paste_back:
                out[o] = finish(o.clip.paste(frames[o]), [(0, len(frames[o]), o.clip.mark)])
    except Exception as exc:  # the call failed: every clip in it fails
        for o in clips:
            fail(o, exc)
        return
    written = 0
    for o in clips:
        try:
            if len(out[o]):
                o.writer.put(out[o])
                written += len(out[o])
        except Exception as exc:  # its encoder failed
            fail(o, exc)
    if on_frames is not None:
        on_frames(written)


__all__ = ["DEFAULT_OPTIONS", "ClipRequest", "ClipResult", "PackOptions", "one_line", "render_clips"]
