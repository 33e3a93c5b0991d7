"""LivePortrait's renderer (docs/specs/liveportrait.md): appearance extractor F (`appearance`), motion
extractor M (`motion_extractor`), warping module W (`warping`), SPADE decoder G (`spade`), stitching and
retargeting (`stitching`), the implicit-keypoint math (`keypoints`), the reference renderer (`renderer`),
and the optimized inference path (`optimized`, with W channels-last-3d in `warping_channels_last`)."""
