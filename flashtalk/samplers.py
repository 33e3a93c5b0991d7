"""Diffusion samplers for an x0-predicting model: JoyVASA's ancestral DDPM (the reference), DDIM and
DPM-Solver++(2M) for few-step sampling.

Every sampler is a pure tensor function of (x0_fn, x_T, schedule, noise): the coefficient tables are
computed on the schedule's device before the loop, the loop is a Python `for` over a fixed step count
with no `.item()`, no data-dependent control flow and no mutable step state, and all random noise is
drawn up front (given by the caller, or from a `torch.Generator`), so the whole loop can be captured in
one CUDA graph. `x0_fn(x_t, t)` maps x_t [N, ...] and integer steps t [N] to the x0 prediction (with
classifier-free guidance batched inside it, see `MotionGenerator.guided_x0_fn`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from flashtalk.errors import FlashTalkError

X0Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Schedule(NamedTuple):
    """Variance schedule tables, index 0 = the padding step (beta 0, alpha_bar 1), shape [T + 1] each."""

    betas: torch.Tensor
    alphas: torch.Tensor
    alpha_bars: torch.Tensor
    sigmas_flex: torch.Tensor  # sqrt(beta_t)
    sigmas_inflex: torch.Tensor  # posterior std sqrt((1 - abar_{t-1}) / (1 - abar_t) * beta_t): JoyVASA's sigma

    @property
    def n_steps(self) -> int:
        return self.betas.shape[0] - 1

    def to(self, device=None, dtype=None) -> "Schedule":
        return Schedule(*(t.to(device=device, dtype=dtype) for t in self))


def cosine_schedule(n_steps: int, *, s: float = 0.008, device=None, dtype: torch.dtype = torch.float64) -> Schedule:
    """The cosine schedule of docs/specs/joyvasa.md §5.1, computed in float64 and returned on `device` in `dtype`."""
    if n_steps < 1:
        raise FlashTalkError(f"a schedule needs at least 1 step, got {n_steps}")
    k = torch.arange(n_steps + 1, dtype=torch.float64) / n_steps
    f = torch.cos((k + s) / (1 + s) * (math.pi / 2)) ** 2
    abar = f / f[0]
    betas = (1 - abar[1:] / abar[:-1]).clamp(1e-4, 0.999)
    betas = torch.cat([betas.new_zeros(1), betas])
    alphas = 1 - betas
    alpha_bars = torch.exp(torch.cumsum(torch.log(alphas), 0))
    sigmas_flex = betas.sqrt()
    post = torch.zeros_like(betas)
    post[1:] = (1 - alpha_bars[:-1]) / (1 - alpha_bars[1:]) * betas[1:]
    return Schedule(betas, alphas, alpha_bars, sigmas_flex, post.sqrt()).to(device, dtype)


def _noise(
    noise: torch.Tensor | None, generator: torch.Generator | None, count: int, x: torch.Tensor, what: str
) -> torch.Tensor:
    shape = (count, *x.shape)
    if noise is None:
        return torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
    if tuple(noise.shape) != shape:
        raise FlashTalkError(
            f"{what}: noise must be shaped {list(shape)} (one draw per noisy step), got {list(noise.shape)}"
        )
    return noise.to(device=x.device, dtype=x.dtype)


def _steps_vector(t: torch.Tensor, n: int) -> torch.Tensor:
    return t.expand(n)


def ddpm_sample(
    x0_fn: X0Fn,
    x_T: torch.Tensor,
    schedule: Schedule,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    trajectory: bool = False,
) -> torch.Tensor:
    """JoyVASA's ancestral sampler over all T steps (docs/specs/joyvasa.md §5.3): x_{t-1} = c0 x_t + c1 x0_hat + sigma_t z.

    noise: [T - 1, *x_T.shape]; noise[j] is used at step t = T - j (t = T..2); t = 1 adds none.
    Returns x_0, or with `trajectory` the stack [T + 1, *x_T.shape] of x_T, x_{T-1}, ..., x_0.
    """
    T = schedule.n_steps
    sched = schedule.to(x_T.device, x_T.dtype)
    z = _noise(noise, generator, T - 1, x_T, "ddpm_sample")
    abar_prev = torch.cat([sched.alpha_bars[:1], sched.alpha_bars[:-1]])
    c0 = (1 - abar_prev) * sched.alphas.sqrt() / (1 - sched.alpha_bars)
    c1 = sched.betas * abar_prev.sqrt() / (1 - sched.alpha_bars)
    steps = torch.arange(T + 1, device=x_T.device)
    x, xs = x_T, [x_T]
    for t in range(T, 0, -1):
        x0 = x0_fn(x, _steps_vector(steps[t], x.shape[0]))
        x = c0[t] * x + c1[t] * x0
        if t > 1:
            x = x + sched.sigmas_inflex[t] * z[T - t]
        if trajectory:
            xs.append(x)
    return torch.stack(xs) if trajectory else x


def timesteps(n_train_steps: int, n_steps: int) -> list[int]:
    """The integer grid T = t_0 > ... > t_{S-1} = 1 > t_S = 0 of a few-step sampler: the S model calls
    are spaced uniformly from T down to 1 (the last call at t = 1, as in the ancestral sampler, whose
    output is the x0 prediction at t = 1), then the final update goes to t = 0."""
    if not 1 <= n_steps <= n_train_steps:
        raise FlashTalkError(
            f"a sampler over a {n_train_steps}-step schedule takes 1..{n_train_steps} steps, not {n_steps}"
        )
    if n_steps == 1:
        return [n_train_steps, 0]
    return [round(n_train_steps - (n_train_steps - 1) * i / (n_steps - 1)) for i in range(n_steps)] + [0]


def timestep_index(n_train_steps: int, n_steps: int, device=None) -> torch.Tensor:
    """`timesteps` as an int64 tensor made on `device` by device ops, with no host-to-device copy, so a
    sampling loop that uses it can be captured in a CUDA graph."""
    timesteps(n_train_steps, n_steps)  # validates the arguments
    zero = torch.zeros(1, dtype=torch.int64, device=device)
    if n_steps == 1:
        return torch.cat([zero + n_train_steps, zero])
    i = torch.arange(n_steps, dtype=torch.float64, device=device)
    calls = torch.round(n_train_steps - (n_train_steps - 1) * i / (n_steps - 1)).to(torch.int64)
    return torch.cat([calls, zero])


def ddim_sample(
    x0_fn: X0Fn,
    x_T: torch.Tensor,
    schedule: Schedule,
    n_steps: int,
    *,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DDIM on an x0-prediction model over `timesteps(T, n_steps)`; eta 0 is deterministic, eta 1 with
    n_steps = T is the ancestral sampler. noise: [n_steps - 1, *x_T.shape] (the last step adds none)."""
    sched = schedule.to(x_T.device, x_T.dtype)
    idx = timestep_index(schedule.n_steps, n_steps, x_T.device)
    abar = sched.alpha_bars[idx]  # [S + 1], abar[-1] = 1
    a_t, a_s = abar[:-1], abar[1:]
    sigma = eta * torch.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))
    c_eps = torch.sqrt((1 - a_s - sigma**2).clamp_min(0))
    z = _noise(noise, generator, n_steps - 1, x_T, "ddim_sample") if eta else None
    x = x_T
    for i in range(n_steps):
        x0 = x0_fn(x, _steps_vector(idx[i], x.shape[0]))
        eps = (x - a_t[i].sqrt() * x0) / (1 - a_t[i]).sqrt()
        x = a_s[i].sqrt() * x0 + c_eps[i] * eps
        if z is not None and i < n_steps - 1:
            x = x + sigma[i] * z[i]
    return x


def dpmpp_2m_sample(x0_fn: X0Fn, x_T: torch.Tensor, schedule: Schedule, n_steps: int) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, multistep, data prediction) over `timesteps(T, n_steps)`:
    first-order first step, second-order steps after it, first-order final step to t = 0 (x_0 = x0_hat)."""
    sched = schedule.to(x_T.device, x_T.dtype)
    idx = timestep_index(schedule.n_steps, n_steps, x_T.device)
    abar = sched.alpha_bars[idx]
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    lam = torch.log(alpha[:-1]) - torch.log(sigma[:-1])  # lambda at the model-evaluated steps t_0..t_{S-1}
    h = lam[1:] - lam[:-1]  # [S - 1], step i + 1 goes t_i -> t_{i+1}
    ratio = torch.ones_like(lam)  # ratio[i] = h_{i-1} / h_i for the 2nd-order correction of step i (i >= 2)
    ratio[2:] = h[:-1] / h[1:]
    x, x0_prev = x_T, None
    for i in range(n_steps - 1):
        x0 = x0_fn(x, _steps_vector(idx[i], x.shape[0]))
        d = x0 if x0_prev is None else (1 + 0.5 / ratio[i + 1]) * x0 - (0.5 / ratio[i + 1]) * x0_prev
        x = (sigma[i + 1] / sigma[i]) * x - alpha[i + 1] * torch.expm1(-h[i]) * d
        x0_prev = x0
    return x0_fn(x, _steps_vector(idx[n_steps - 1], x.shape[0]))
