"""JoyVASA's motion generator (docs/specs/joyvasa.md): the diffusion-transformer denoiser (`denoiser`) and
the windowed audio-features -> LivePortrait-motion pipeline (`pipeline`)."""
