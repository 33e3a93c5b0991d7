"""Triton helpers shared by the kernel files: the import guard, the `_jit` decorator, block sizes, rounding
stores and the bilinear corner math of grid_sample (align_corners=False).

`_jit` functions run compiled or under the Triton interpreter, chosen at each launch by `TRITON_INTERPRET`
(triton's own `triton.jit` decides once, when the function is decorated), so a test can switch the
interpreter on for itself only. Without triton installed, `triton` and `tl` are None and `_jit` leaves
functions undecorated, so the kernel modules still import and their PyTorch references run (the dispatch
reports why).
"""

from __future__ import annotations

from flashtalk.kernels.dispatch import interpreter_enabled

try:
    import triton
    import triton.language as tl
    from triton.runtime.jit import JITFunction
except ImportError:
    triton = tl = None

    def _jit(fn):
        return fn
else:
    _interpreted: dict[int, object] = {}

    def _interpreter(fn: JITFunction):
        """The interpreted twin of a jit function (made once)."""
        twin = _interpreted.get(id(fn))
        if twin is None:
            from triton.runtime.interpreter import InterpretedFunction

            twin = _interpreted[id(fn)] = InterpretedFunction(fn.fn)
        return twin

    class _Kernel(JITFunction):
        """A jit function launched compiled, or interpreted while `TRITON_INTERPRET=1` (decided per launch).
        A subclass of JITFunction, so the compiler inlines it as a callee as usual."""

        def run(self, *args, grid, warmup, **kwargs):
            if interpreter_enabled():
                return _interpreter(self).run(*args, grid=grid, warmup=warmup, **kwargs)
            return super().run(*args, grid=grid, warmup=warmup, **kwargs)

    _compiled_call = JITFunction.__call__

    def _device_call(self, *args, **kwargs):
        """Inside an interpreted kernel, a call of a jit function (ours, or triton.language's own `tl.max`,
        `tl.sum`, decorated when triton was imported) runs its interpreted twin; otherwise it raises as
        before (a jit function cannot be called from Python)."""
        if interpreter_enabled():
            return _interpreter(self)(*args, **kwargs)
        return _compiled_call(self, *args, **kwargs)

    # The one process-wide patch of Triton, kept on purpose: Triton's interpreter runs a kernel body as Python,
    # and a call in it of a jit function that was decorated without the interpreter (triton.language's own
    # `tl.max`, `tl.sum`, ..., decorated when triton is imported, and ours) reaches `JITFunction.__call__`,
    # which raises "Cannot call @triton.jit'd outside of the scope of a kernel". `triton.jit` picks interpreted
    # or compiled once, at decoration, from TRITON_INTERPRET (seen on triton 3.6.0 and 3.9.0); the patch lets
    # that choice be made per launch instead, so tests switch the interpreter on for themselves only.
    # Outside the interpreter the call behaves exactly as before.
    JITFunction.__call__ = _device_call

    def _jit(fn):
        return _Kernel(fn)


def block_size(n: int) -> int:
    """Elements (voxels, pixels) per program: 256 on the GPU (one or two per thread at 4 warps); under the
    interpreter, whose cost is per program and per op, one large block covers up to 8192 at once."""
    if interpreter_enabled():
        return min(max(triton.next_power_of_2(n), 16), 8192)
    return 256


@_jit
def to_element(x, p):
    """fp32 `x` cast to the element type of pointer `p`, rounding to nearest even. bf16 is rounded by hand:
    the Triton interpreter's own fp32 -> bf16 cast truncates (on the GPU both agree)."""
    if p.dtype.element_ty == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = tl.where(x != x, x, bits.to(tl.float32, bitcast=True))
    return x.to(p.dtype.element_ty)


@_jit
def axis_corners(x, n, BORDER: tl.constexpr):
    """Linear-interpolation corners of pixel coordinate x on an axis of size n: indices (i0, i1) and weights
    (w0, w1), a weight being 0 where its corner lies outside [0, n-1]; BORDER clamps x into the axis first."""
    if BORDER:
        x = tl.minimum(tl.maximum(x, 0.0), n - 1.0)
    else:
        x = tl.minimum(tl.maximum(x, -2.0), n + 1.0)  # far-out points keep both corners outside, no int overflow
    f = tl.floor(x)
    w1 = x - f
    w0 = 1.0 - w1
    i0 = f.to(tl.int32)
    i1 = i0 + 1
    w0 = tl.where((i0 >= 0) & (i0 < n), w0, 0.0)
    w1 = tl.where((i1 >= 0) & (i1 < n), w1, 0.0)
    return i0, i1, w0, w1


@_jit
def grid_corners(g, n, BORDER: tl.constexpr):
    """`axis_corners` of a normalised grid_sample coordinate g (align_corners=False)."""
    return axis_corners(((g + 1.0) * n - 1.0) * 0.5, n, BORDER)
