"""Provenance: the invisible keyed watermark that marks every generated frame, and its detector.

`flashtalk.provenance.watermark` holds `embed` (used by the engine on every frame batch), `detect_frames`,
`detect_file` and the payload helpers; `flashtalk detect` is the command line over them.
"""
