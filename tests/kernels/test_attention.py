"""Triton attention (`flashtalk.kernels.attention`) against an fp64 reference: every test runs on the CPU
under the interpreter and on CUDA compiled (`kernel_device`, the CUDA copy marked `gpu`).

Accuracy rule: the kernel's max error against `attention_ref` in fp64 (on the same rounded inputs) must be at
most 2x PyTorch SDPA's own error in the same dtype, plus a tiny floor. Kernel outputs are poisoned with NaN
before the kernel writes them, so an unwritten element fails the test.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from flashtalk.errors import FlashTalkError
from flashtalk.kernels import last_choice, use_kernels
from flashtalk.kernels.attention import _launch, _variant, attention, attention_ref
from flashtalk.kernels.cases import ATTENTION_LENGTHS as LENGTHS
from flashtalk.kernels.cases import MASK_KINDS
from flashtalk.kernels.cases import attention_inputs as _make
from flashtalk.kernels.cases import attention_masks as _masks
from tests.conftest import triton_backend
from tests.utils import assert_close, max_err

pytestmark = pytest.mark.usefixtures("on_kernel_device")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
FLOOR = {torch.float32: 1e-6, torch.float16: 1e-4, torch.bfloat16: 1e-3}


def _sdpa(q, k, v, attn_mask, key_padding_mask, causal, scale):
    """PyTorch SDPA in the inputs' dtype, with our masks folded into one (causal aligned bottom-right);
    rows with nothing allowed are 0, as in our convention."""
    Lq, Lk = q.shape[2], k.shape[2]
    allowed = torch.ones(Lq, Lk, dtype=torch.bool)
    if causal:
        allowed = allowed.tril(Lk - Lq)
    allowed = allowed.expand(q.shape[0], 1, Lq, Lk)
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, None, :]
    bias = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            allowed = allowed & attn_mask
        else:
            bias = attn_mask.to(q.dtype)
    mask = torch.zeros(allowed.shape, dtype=q.dtype).masked_fill(~allowed, float("-inf"))
    mask = mask if bias is None else mask + bias
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.nan_to_num(0.0)


def _check(q, k, v, *, attn_mask=None, key_padding_mask=None, causal=False, scale=None, variant=None):
    """Run one kernel variant into a NaN-poisoned output and hold it to the accuracy rule; returns it."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    out = torch.full(q.shape, float("nan"), dtype=q.dtype)
    _launch(q, k, v, attn_mask, key_padding_mask, causal, scale, variant=variant, out=out)
    am64 = attn_mask if attn_mask is None or attn_mask.dtype == torch.bool else attn_mask.double()
    ref = attention_ref(
        q.double(),
        k.double(),
        v.double(),
        attn_mask=am64,
        key_padding_mask=key_padding_mask,
        causal=causal,
        scale=scale,
    )
    sdpa_err = max_err(_sdpa(q, k, v, attn_mask, key_padding_mask, causal, scale), ref)
    assert not out.isnan().any(), f"{int(out.isnan().sum())} NaN in the kernel output"
    err = max_err(out, ref)
    bound = 2 * sdpa_err + FLOOR[q.dtype]
    assert err <= bound, f"max error {err:.3e} > 2 x SDPA's {sdpa_err:.3e} + {FLOOR[q.dtype]:g} ({q.dtype})"
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", [16, 32])
@pytest.mark.parametrize("Lq,Lk", [pytest.param(*c, id=f"Lq{c[0]}-Lk{c[1]}") for c in LENGTHS])
def test_lengths_by_shape(Lq, Lk, D, dtype):
    q, k, v = _make(1, 2, Lq, Lk, D, dtype)
    _check(q, k, v)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("Lq,Lk", [pytest.param(110, 110, id="Lq110-Lk110"), pytest.param(63, 257, id="Lq63-Lk257")])
def test_large_head_dims(Lq, Lk, D, dtype):
    q, k, v = _make(1, 1, Lq, Lk, D, dtype)
    _check(q, k, v, causal=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("Lq,Lk", [pytest.param(*c, id=f"Lq{c[0]}-Lk{c[1]}") for c in [(7, 7), (111, 110), (63, 1)]])
def test_tiled_variant_on_short_lengths(Lq, Lk, dtype):
    """The tiled loop serves only Lk > 128 by default; run it on short ones too (partial tiles, Lq != Lk)."""
    q, k, v = _make(2, 1, Lq, Lk, 32, dtype)
    _check(q, k, v, variant="tiled")
    _check(q, k, v, causal=True, variant="tiled", scale=0.3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "variant,Lq,Lk", [("short", 37, 110), ("tiled", 150, 131)], ids=["short-Lq37-Lk110", "tiled-Lq150-Lk131"]
)
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_masks(kind, variant, Lq, Lk, dtype):
    B, H = 2, 2
    q, k, v = _make(B, H, Lq, Lk, 16, dtype)
    attn_mask, kpm, causal = _masks(kind, B, H, Lq, Lk, dtype)
    out = _check(q, k, v, attn_mask=attn_mask, key_padding_mask=kpm, causal=causal, variant=variant)
    # rows with no allowed key are exactly zero
    allowed = torch.ones(B, H, Lq, Lk, dtype=torch.bool)
    if attn_mask is not None:
        allowed = allowed & (attn_mask if attn_mask.dtype == torch.bool else attn_mask > float("-inf"))
    if kpm is not None:
        allowed = allowed & ~kpm[:, None, None, :]
    if causal:
        allowed = allowed & torch.ones(Lq, Lk, dtype=torch.bool).tril(Lk - Lq)
    dead = ~allowed.any(-1)
    if kind in ("bool-B1LqLk-allmasked-rows", "keypad"):
        assert dead.any()
    assert (out[dead] == 0).all()


def test_causal_with_more_queries_than_keys():
    """Lq > Lk with causal: the first Lq - Lk query rows see no key and give zeros, in both variants."""
    q, k, v = _make(1, 2, 100, 40, 32, torch.float32)
    for variant in ("short", "tiled"):
        out = _check(q, k, v, causal=True, variant=variant)
        assert (out[:, :, :60] == 0).all() and (out[:, :, 60:].abs().sum(-1) > 0).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["transposed", "sliced", "dmajor"])
@pytest.mark.parametrize("variant,Lq,Lk", [("short", 63, 110), ("tiled", 63, 257)], ids=["short", "tiled"])
def test_noncontiguous_inputs(layout, variant, Lq, Lk, dtype):
    q, k, v = _make(2, 3, Lq, Lk, 32, dtype, layout)
    assert not q.is_contiguous() and not k.is_contiguous()
    kpm = torch.rand(2, Lk) < 0.2
    _check(q, k, v, key_padding_mask=kpm[:, :], causal=True, variant=variant)


def test_mixed_layouts_and_broadcast_query():
    """q expanded over heads (stride 0), k transposed, v sliced: each tensor's strides are honoured."""
    q = torch.randn(2, 1, 50, 32).expand(2, 4, 50, 32)
    k = _make(2, 4, 50, 140, 32, torch.float32, "transposed")[1]
    v = _make(2, 4, 50, 140, 32, torch.float32, "sliced")[2]
    _check(q, k, v)


def test_no_keys_gives_zeros():
    q, k, v = _make(1, 2, 5, 0, 16, torch.float32)
    with use_kernels("triton"):
        out = attention(q, k, v)
    assert "empty dimension" in last_choice("attention").reason
    assert out.shape == q.shape and (out == 0).all()


def test_variant_choice_by_shape():
    assert [_variant(n) for n in (1, 110, 128, 129, 3000)] == ["short", "short", "short", "tiled", "tiled"]
    # fp32 heads wider than 32 run tiled: the one-tile kernel would hold all of V in fp32 registers
    assert [_variant(110, d, torch.float32) for d in (16, 32, 64, 128)] == ["short", "short", "tiled", "tiled"]
    assert _variant(110, 64, torch.bfloat16) == "short"
    assert (
        _variant(110, 32, torch.float32, masked=True) == "tiled"
        and _variant(110, 32, torch.bfloat16, masked=True) == "short"
    )


def test_launch_tables_give_wgmma_tile_heights():
    """fp16 / bf16 tiles are >= 64 rows (sm_90 wgmma works on 64-row warpgroup tiles; the sm_90 compile of
    each entry is in the README's launch-table check); masked tiled calls get their own (8-warp) table."""
    from flashtalk.kernels.attention import HEAD_DIMS, launch_config

    for dtype in (torch.float16, torch.bfloat16):
        for d in HEAD_DIMS:
            for cfg in (
                launch_config("short", d, dtype),
                launch_config("tiled", d, dtype),
                launch_config("tiled", d, dtype, masked=True),
            ):
                assert cfg["BM"] >= 64, (dtype, d, cfg)
    assert launch_config("tiled", 32, torch.bfloat16, masked=True)["num_warps"] == 8
    assert launch_config("tiled", 64, torch.float32)["BM"] <= 32  # CUDA-core fp32: small tiles, no spills


def test_public_op_dispatch(kernel_device):
    q, k, v = _make(2, 2, 20, 150, 32, torch.float16, "transposed")
    kpm = torch.rand(2, 150) < 0.3
    with use_kernels("triton"):
        out = attention(q, k, v, key_padding_mask=kpm, causal=True)
        assert last_choice("attention").backend == triton_backend(kernel_device)
    expected = _launch(q, k, v, None, kpm, True, 1 / math.sqrt(32))
    assert torch.equal(out, expected)
    with use_kernels("reference"):
        ref = attention(q, k, v, key_padding_mask=kpm, causal=True)
        assert last_choice("attention").backend == "reference"
    assert torch.equal(ref, attention_ref(q, k, v, key_padding_mask=kpm, causal=True))


@pytest.mark.parametrize(
    "case,reason",
    [
        ("D24", "head dim D=24"),
        ("fp64", "dtype torch.float64"),
        ("grad", "forward-only"),
        ("empty", "empty dimension"),
        ("grid", "exceeds the grid limit"),
    ],
)
def test_fallback_says_why(case, reason):
    B, dtype, D, Lq, Lk = 1, torch.float32, 32, 5, 9
    if case == "grid":
        B, D, Lq, Lk = 32769, 16, 1, 2  # B * H = 65538 programs along grid dimension 1
    if case == "D24":
        D = 24
    if case == "fp64":
        dtype = torch.float64
    if case == "empty":
        Lq = 0
    q, k, v = _make(B, 2, Lq, Lk, D, dtype)
    if case == "grad":
        q.requires_grad_(True)
    with use_kernels("triton"):
        out = attention(q, k, v)
    choice = last_choice("attention")
    assert choice.backend == "reference" and reason in choice.reason, choice
    assert_close(out.detach(), attention_ref(q.detach(), k, v), 0, 0)


@pytest.mark.parametrize(
    "args,kwargs,message",
    [
        ((torch.randn(2, 5, 16), torch.randn(2, 5, 16), torch.randn(2, 5, 16)), {}, "shaped [B, H, L, D]"),
        ((torch.randn(1, 2, 5, 16), torch.randn(1, 2, 6, 16), torch.randn(1, 2, 7, 16)), {}, "shapes disagree"),
        (
            (torch.randn(1, 2, 5, 16), torch.randn(1, 2, 6, 16).half(), torch.randn(1, 2, 6, 16)),
            {},
            "one floating dtype",
        ),
        (
            (torch.randn(1, 2, 5, 16), torch.randn(1, 2, 6, 16), torch.randn(1, 2, 6, 16)),
            {"key_padding_mask": torch.zeros(1, 5, dtype=torch.bool)},
            "key_padding_mask must be bool [B, Lk] = [1, 6]",
        ),
        (
            (torch.randn(1, 2, 5, 16), torch.randn(1, 2, 6, 16), torch.randn(1, 2, 6, 16)),
            {"attn_mask": torch.ones(5, 5, dtype=torch.bool)},
            "does not broadcast to [B, H, Lq, Lk]",
        ),
        (
            (torch.randn(1, 1, 5, 16), torch.randn(1, 1, 6, 16), torch.randn(1, 1, 6, 16)),
            {"attn_mask": torch.ones(1, 3, 5, 6, dtype=torch.bool)},
            "does not broadcast to [B, H, Lq, Lk]",
        ),
        (
            (torch.randn(1, 2, 5, 16), torch.randn(1, 2, 6, 16), torch.randn(1, 2, 6, 16)),
            {"attn_mask": torch.ones(5, 6, dtype=torch.int32)},
            "attn_mask must be bool",
        ),
        (
            (torch.randn(1, 2, 5, 16), torch.randn(1, 2, 6, 16), torch.randn(1, 2, 6, 16)),
            {"attn_mask": torch.ones(5, 6, dtype=torch.bool, device="meta")},
            "different devices",
        ),
    ],
    ids=["3d", "lengths", "dtypes", "keypad-shape", "mask-shape", "mask-grows-H", "int-mask", "devices"],
)
def test_bad_input_errors(args, kwargs, message):
    with use_kernels("triton"), pytest.raises(FlashTalkError, match=None) as info:
        attention(*args, **kwargs)
    assert message in str(info.value)


def test_opcheck():
    q, k, v = _make(1, 2, 9, 20, 16, torch.float32, "transposed")
    am = torch.rand(9, 20) < 0.8
    kpm = torch.rand(1, 20) < 0.2
    torch.library.opcheck(torch.ops.flashtalk.attention.default, (q, k, v, am, kpm, True, 0.25))
    torch.library.opcheck(torch.ops.flashtalk.attention.default, (q, k, v, None, None, False, 0.25))


def test_torch_compile_smoke():
    q, k, v = _make(2, 2, 12, 33, 16, torch.float16)
    bias = torch.randn(12, 33, dtype=torch.float16)

    def block(q, k, v, bias):
        return attention(q * 1.5, k, v, attn_mask=bias, causal=True) + 1.0

    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    with use_kernels("triton"):
        expected = block(q, k, v, bias)
        got = compiled(q, k, v, bias)
    assert_close(got, expected, 0, 0)
    assert_close(expected - 1.0, attention_ref(q * 1.5, k, v, attn_mask=bias, causal=True), 2e-3, 2e-3)
