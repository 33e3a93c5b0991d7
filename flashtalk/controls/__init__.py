"""VASA-1-style user controls in LivePortrait's keypoint space (docs/specs/controls.md): the control set with
its names and ranges (`control_set`), how it acts on motion (`apply`), and emotion presets (`emotion`)."""
