"""Deliberately wrong attention implementations: `flashtalk kernels verify attention=byo_kernel.bad:NAME`
must fail each one, naming the case and the error, and exit non-zero without a traceback.

    off_by_1e2   the right result plus 1e-2
    transposed   the result's [B, H, L, D] memory read as [B, L, H, D]
    nan          one NaN in every output
    in_place     writes the result into q
    hangs        never returns
    raises       raises a plain exception
"""

from __future__ import annotations

import time

from byo_kernel.ops import attention


def off_by_1e2(q, k, v, **kw):
    return attention(q, k, v, **kw) + 1e-2


def transposed(q, k, v, **kw):
    out = attention(q, k, v, **kw)
    return out.transpose(1, 2).reshape(out.shape)


def nan(q, k, v, **kw):
    out = attention(q, k, v, **kw).clone()
    out.view(-1)[0] = float("nan")
    return out


def in_place(q, k, v, **kw):
    out = attention(q, k, v, **kw)
    q.copy_(out)
    return q


def hangs(q, k, v, **kw):
    time.sleep(3600)


def raises(q, k, v, **kw):
    raise RuntimeError("this implementation always fails")
