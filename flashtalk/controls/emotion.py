"""Emotion presets: an expression offset [21, 3] from a reference photo, saved as JSON or safetensors (never
a pickle), and loaded back for the `emotion` control (`flashtalk emotion save / show`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from flashtalk.errors import FlashTalkError

if TYPE_CHECKING:
    import torch

PRESET_FORMAT = "flashtalk-expression-preset"


def expression_offset(exp_ref: "torch.Tensor", exp_neutral: "torch.Tensor | None" = None) -> "torch.Tensor":
    """A reference photo's expression [21, 3] relative to a neutral one; without a neutral photo, the
    reference's own expression with keypoint 5's x and y zeroed (that keypoint acts as a global offset)."""
    exp_ref = exp_ref.reshape(21, 3).double()
    if exp_neutral is not None:
        return exp_ref - exp_neutral.reshape(21, 3).double()
    out = exp_ref.clone()
    out[5, :2] = 0
    return out


def save_preset(path: str | Path, offset: "torch.Tensor", name: str, note: str = "") -> Path:
    """Write an expression preset: JSON ({"format", "name", "note", "offset": 21 × [x, y, z]}) or
    safetensors (tensor "offset" [21, 3] float32, name / note in the metadata), by the file's suffix."""
    path = Path(path)
    offset = offset.detach().reshape(21, 3).to("cpu")
    if path.suffix.lower() == ".safetensors":
        import torch
        from safetensors.torch import save_file

        save_file(
            {"offset": offset.to(torch.float32).contiguous()},
            str(path),
            metadata={"format": PRESET_FORMAT, "name": name, "note": note},
        )
    elif path.suffix.lower() == ".json":
        path.write_text(
            json.dumps(
                {
                    "format": PRESET_FORMAT,
                    "name": name,
                    "note": note,
                    "offset": [[float(x) for x in row] for row in offset.tolist()],
                },
                indent=1,
            )
        )
    else:
        raise FlashTalkError(f"preset {path}: use a .json or .safetensors file name")
    return path


def load_preset(path: str | Path) -> tuple[str, "torch.Tensor"]:
    """(name, offset [21, 3] float64) from a preset file written by `save_preset`."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FlashTalkError(f"preset {path} not found")
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if "offset" not in f.keys():
                    raise FlashTalkError(f"preset {path}: no 'offset' tensor (has {sorted(f.keys())})")
                offset, name = f.get_tensor("offset"), meta.get("name", path.stem)
        except FlashTalkError:
            raise
        except Exception as exc:
            raise FlashTalkError(f"preset {path}: not a readable safetensors file ({exc})") from None
    elif path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FlashTalkError(f"preset {path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != PRESET_FORMAT or "offset" not in data:
            raise FlashTalkError(f"preset {path}: not a {PRESET_FORMAT} file (needs 'format' and 'offset')")
        try:
            offset = torch.tensor(data["offset"], dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise FlashTalkError(f"preset {path}: 'offset' must be 21 rows of 3 numbers") from None
        name = str(data.get("name", path.stem))
    else:
        raise FlashTalkError(f"preset {path}: use a .json or .safetensors file")
    if tuple(offset.shape) != (21, 3) or not bool(torch.isfinite(offset).all()):
        raise FlashTalkError(f"preset {path}: 'offset' must be [21, 3] finite numbers, got {tuple(offset.shape)}")
    return name, offset.double()
