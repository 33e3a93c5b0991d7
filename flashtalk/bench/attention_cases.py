"""Attention benchmark cases at the shapes FlashTalk runs (motion transformer, audio encoder) plus a standard
long-sequence grid, their inputs, and the providers they are measured against (SDPA per backend, xformers,
torch.compile of the reference). Shared by `flashtalk bench`, the GPU suite and `benchmarks/bench_attention.py`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Case:
    group: str  # motion | audio | standard
    B: int
    H: int
    L: int  # Lq = Lk
    D: int
    causal: bool = False
    padded: bool = False  # a key-padding mask with the last ~10% of keys padded on every other batch element

    @property
    def name(self) -> str:
        extra = ("-causal" if self.causal else "") + ("-keypad" if self.padded else "")
        return f"{self.group}-B{self.B}-H{self.H}-L{self.L}-D{self.D}{extra}"

    def flops(self) -> float:
        return 4.0 * self.B * self.H * self.L * self.L * self.D * (0.5 if self.causal else 1.0)


# The one registry of cases (bench_attention.py and test_bench_attention.py share it).
CASES: list[Case] = (
    # motion transformer: ~110 tokens per window, guidance batched, one tile per head
    [Case("motion", B, 8, 110, 32) for B in (2, 16, 64)]
    # audio encoder: wav2vec2/HuBERT family at 50 tokens/s, padded batches
    + [Case("audio", B, 12, L, 64, padded=B > 1) for B in (1, 8) for L in (200, 1000, 3000)]
    # standard grid: 16k tokens per batch, model width 2048
    + [
        Case("standard", 16384 // L, 2048 // D, L, D, causal=c)
        for D in (64, 128)
        for L in (1024, 2048, 4096, 8192, 16384)
        for c in (False, True)
    ]
)

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
SDPA_BACKENDS = ("flash", "efficient", "cudnn", "math")


def make_inputs(case: Case, dtype: torch.dtype, device: str = "cuda"):
    """q, k, v [B, H, L, D] laid out as a projection writes them ([B, L, H, D] storage), and the key-padding
    mask (True = pad) or None."""
    q, k, v = (
        torch.randn(case.B, case.L, case.H, case.D, device=device, dtype=dtype).transpose(1, 2) for _ in range(3)
    )
    kpm = None
    if case.padded:
        kpm = torch.zeros(case.B, case.L, dtype=torch.bool, device=device)
        kpm[1::2, case.L - case.L // 10 :] = True
    return q, k, v, kpm


def providers(case: Case, q, k, v, kpm) -> dict[str, Callable[[], torch.Tensor] | str]:
    """name -> a zero-argument callable, or a string saying why the provider cannot run this case."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from flashtalk.kernels.attention import attention, attention_ref

    out: dict[str, Callable[[], torch.Tensor] | str] = {
        "flashtalk": lambda: attention(q, k, v, key_padding_mask=kpm, causal=case.causal),
    }
    sdpa_mask = None if kpm is None else ~kpm[:, None, None, :]  # SDPA: True = may attend
    backend_enum = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }
    for name in SDPA_BACKENDS:

        def run(b=backend_enum[name]):
            with sdpa_kernel(b):
                return torch.nn.functional.scaled_dot_product_attention(
                    q, k, v, attn_mask=sdpa_mask, is_causal=case.causal and sdpa_mask is None
                )

        if case.causal and sdpa_mask is not None:
            out[f"sdpa-{name}"] = "causal together with a padding mask is not benchmarked for SDPA"
            continue
        try:
            run()
            out[f"sdpa-{name}"] = run
        except RuntimeError as e:  # the backend refuses this shape/mask/dtype
            out[f"sdpa-{name}"] = f"refused: {str(e).splitlines()[0][:100]}"
    if importlib.util.find_spec("xformers") is None:
        out["xformers"] = "xformers is not installed"
    else:
        import xformers.ops as xops

        bias = None
        if kpm is not None:
            bias = torch.zeros(case.B, case.H, case.L, case.L, dtype=q.dtype, device=q.device)
            bias.masked_fill_(kpm[:, None, None, :], float("-inf"))
        if case.causal:
            bias = (
                xops.LowerTriangularMask()
                if bias is None
                else bias + torch.full((case.L, case.L), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
            )
        qx, kx, vx = (t.transpose(1, 2) for t in (q, k, v))  # xformers wants [B, L, H, D]
        out["xformers"] = lambda: xops.memory_efficient_attention(qx, kx, vx, attn_bias=bias)
    compiled = torch.compile(attention_ref)
    out["compiled-ref"] = lambda: compiled(q, k, v, key_padding_mask=kpm, causal=case.causal)
    return out
