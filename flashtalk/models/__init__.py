"""The networks as `nn.Module`s, a folder per published family: `liveportrait` (the renderer: F, M, W, G,
stitching, and its optimized inference path), `hubert` (the speech encoder), `joyvasa` (the motion
denoiser and its windowed pipeline) and `preview` (the weights-free stand-in); shared blocks in `layers`.
Weight loading lives apart, in `flashtalk.weights`."""
