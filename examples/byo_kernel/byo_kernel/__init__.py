"""A worked example of bringing your own kernel to FlashTalk: `ops` holds two implementations (registered
through the `flashtalk.kernels` entry points of this package's pyproject.toml); `bad` holds deliberately
wrong ones that `flashtalk kernels verify` must reject (named on the command line as module:function)."""
