"""`flashtalk bench`: the benchmark harness (`harness`), its one case registry (`registry`, with the attention,
warp and streaming cases in `attention_cases` / `warp_cases` / `streaming_cases`, and what a case is made of in
`cases`) and the one-call GPU suite (`suite`). Inside the package, so `flashtalk bench` works from a wheel;
`benchmarks/` keeps thin scripts over the same cases."""

from __future__ import annotations

from flashtalk.bench.harness import SCHEMA, run, validate
from flashtalk.bench.report import compare

__all__ = ["SCHEMA", "compare", "run", "validate"]
