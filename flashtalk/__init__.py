"""FlashTalk: a real-time engine that turns one portrait and a speech track into a talking head.

Importing this package is cheap: it does not import triton, compile kernels or touch CUDA.
Heavy pieces are imported on first use.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
