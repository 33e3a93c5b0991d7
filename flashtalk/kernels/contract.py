"""What an implementation of a kernel op must do: the op's contract, and the one call path every
implementation goes through.

Each op module defines `CONTRACT = OpContract(...)` beside its reference and decorates its public function
with `dispatched(CONTRACT)`. The docs page of the kernels (docs/kernels.md) shows `OpContract.markdown()` of
each op, and `flashtalk kernels list` prints it. Rules common to every op:

* it is called with the op's own arguments (positional and keyword, exactly as the public function);
* it returns new tensors of the shapes and dtypes stated, on the inputs' device, any strides;
* it never writes into its inputs (nor into memory it did not allocate);
* it may refuse a call by raising `flashtalk.kernels.Unsupported(reason)`: the reference runs instead and
  the reason is recorded (`last_choice(op)`, `flashtalk info`), as our kernels do for what they do not serve;
* its accuracy is held to the tolerance rule of `flashtalk.kernels.tolerance` (`flashtalk kernels verify`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from flashtalk.errors import FlashTalkError
from flashtalk.kernels.dispatch import Choice, record

Spec = tuple[tuple[int, ...], torch.dtype] | None  # an output's (shape, dtype), None: the op returns None there


@dataclass(frozen=True)
class OpContract:
    op: str
    signature: str  # the public function's parameters
    accepts: tuple[str, ...]  # shapes, dtypes, strides, masks every implementation must accept
    returns: str
    may_refuse: str  # what our kernel refuses (the reference then runs), and how another implementation may
    check: Callable[..., None]  # input validation (raises FlashTalkError naming what is wrong)
    outputs: Callable[..., list[Spec]]  # the output specs of a call, from its (checked) arguments
    reference: Callable  # the pure-PyTorch `<op>_ref`
    rule: str = "dtype"  # accuracy rule (flashtalk.kernels.tolerance.RULES): "dtype", "uint8" or "exact"

    def markdown(self) -> str:
        from flashtalk.kernels.tolerance import RULES

        lines = [f"`{self.op}({self.signature})`", "", "Must accept:", ""]
        lines += [f"- {a}" for a in self.accepts]
        lines += [
            "",
            f"Returns: {self.returns}",
            "",
            f"May refuse: {self.may_refuse}",
            "",
            "Writes into its inputs: never.",
            "",
            f"Accuracy: {RULES[self.rule]}",
        ]
        return "\n".join(lines)


def as_outputs(out) -> list:
    """An op's result as a list (a tuple's items, else the one tensor)."""
    return list(out) if isinstance(out, (tuple, list)) else [out]


def output_problem(contract: OpContract, out, args: tuple, kwargs: dict) -> str | None:
    """Why `out` does not match the contract's output specs for this call (type, shape, dtype, device), or None."""
    specs = contract.outputs(*args, **kwargs)
    got = as_outputs(out)
    if len(got) != len(specs):
        return f"returned {len(got)} value(s), the contract says {len(specs)}"
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
    for i, (o, spec) in enumerate(zip(got, specs)):
        where = f"output {i}" if len(specs) > 1 else "the output"
        if spec is None:
            if o is not None:
                return f"{where} should be None for this call"
            continue
        if not isinstance(o, torch.Tensor):
            return f"{where} is {type(o).__name__}, not a tensor"
        shape, dtype = spec
        if tuple(o.shape) != tuple(shape) or o.dtype != dtype:
            return (
                f"{where} is {str(o.dtype).removeprefix('torch.')} {list(o.shape)}, the contract says "
                f"{str(dtype).removeprefix('torch.')} {list(shape)}"
            )
        if device is not None and o.device != device:
            return f"{where} is on {o.device}, the inputs on {device}"
    return None


def dispatched(contract: OpContract) -> Callable[[Callable], Callable]:
    """Decorate an op's public function: with another implementation chosen for the op (`use_impl`,
    `FLASHTALK_KERNELS`), check the inputs, call it, check its outputs; else run ours unchanged."""
    from flashtalk.kernels.registry import Unsupported, selected

    def wrap(ours: Callable) -> Callable:
        @functools.wraps(ours)
        def call(*args, **kwargs):
            impl = selected(contract.op)
            if impl is None:
                return ours(*args, **kwargs)
            contract.check(*args, **kwargs)
            impl.calls += 1
            try:
                out = impl.fn(*args, **kwargs)
            except Unsupported as exc:
                record(contract.op, Choice("reference", f"{impl.name} does not serve this call: {exc}", impl.name))
                return contract.reference(*args, **kwargs)
            problem = output_problem(contract, out, args, kwargs)
            if problem:
                raise FlashTalkError(f"{contract.op} implementation {impl.name}: {problem}")
            record(contract.op, Choice("impl", f"{impl.origin} {impl.target}", impl.name))
            return out

        call.contract = contract
        return call

    return wrap
