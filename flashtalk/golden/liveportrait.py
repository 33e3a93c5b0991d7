"""Golden family "liveportrait": our outputs for every gated array of a LivePortrait golden folder.

Weights come from the folder's `manifest.json` seed keys through the golden rule (docs/specs/liveportrait.md §12.1) at the
folder's base_seed: gain √6 for the warping module, 1 elsewhere. Networks run in `dtype` (float32 with
TF32 off, or float64), with the weights generated in float64 and cast once. The warping module runs twice
(unless `published_only`): as published, and on the renderer's fast path with the fused warping tail (arrays
`out_*@fast+fused-tail`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from flashtalk.errors import FlashTalkError
from flashtalk.models.liveportrait import keypoints as kpm
from flashtalk.weights.liveportrait import seeded_state_dict

Arrays = dict[str, torch.Tensor]


def compute(
    folder: Path,
    dtype: torch.dtype,
    device: torch.device,
    base_seed: int,
    files: set[str],
    published_only: bool = False,
) -> Iterator[tuple[str, Arrays]]:
    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    cases: dict[str, Callable[[dict, Callable], Arrays]] = {
        "appearance_feature_extractor.npz": _appearance,
        "motion_extractor.npz": _motion_extractor,
        "warping_module.npz": lambda d, build: _warping(d, build, fast_path=not published_only),
        "spade_generator.npz": _spade,
        "stitching_retargeting.npz": _stitching,
        "keypoint_transform.npz": _keypoint_transform,
        "motion_compose.npz": _motion_compose,
        "grid_sample_5d.npz": _grid_sample_5d,
    }
    unknown = sorted(files - set(cases))
    if unknown:
        raise FlashTalkError(f"{folder}: no LivePortrait golden case for {', '.join(unknown)}")

    def build(network: str) -> torch.nn.Module:
        return _seeded(network, manifest, base_seed, dtype, device)

    for file in sorted(files):
        with np.load(folder / file) as npz:
            data = {k: torch.from_numpy(npz[k]).to(device, dtype) for k in npz.files if k.startswith("in_")}
        yield file, cases[file](data, build)


def _seeded(network: str, manifest: dict, base_seed: int, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    from flashtalk.models.liveportrait.renderer import build_network

    module = build_network(network, "liveportrait").to(device, dtype)  # cast first: fp64 keeps every bit
    module.load_state_dict(seeded_state_dict(network, manifest, base_seed), strict=True)
    return module.eval()


def _appearance(d: Arrays, build) -> Arrays:
    return {"out_feature_3d": build("appearance_feature_extractor")(d["in_image"])}


def motion_postprocess(out: Arrays) -> Arrays:
    """Spec §4.1: degrees [B, 1], R [B, 3, 3] and the transformed keypoints x [B, 21, 3]."""
    pitch, yaw, roll = (kpm.bins_to_degrees(out[k]) for k in ("pitch", "yaw", "roll"))
    R = kpm.rotation_from_degrees(pitch, yaw, roll)
    x = kpm.transform_keypoints(out["kp"], R, out["exp"], out["scale"], out["t"])
    return {"pitch_deg": pitch, "yaw_deg": yaw, "roll_deg": roll, "R": R, "x": x}


def _motion_extractor(d: Arrays, build) -> Arrays:
    out = build("motion_extractor")(d["in_image"])
    post = motion_postprocess(out)
    return {**{f"out_{k}": v for k, v in out.items()}, **{f"post_{k}": v for k, v in post.items()}}


FAST = "@fast+fused-tail"  # the warping module on the renderer's fast path, with the fused tail


def _warping(d: Arrays, build, fast_path: bool) -> Arrays:
    """The network as published, and with `fast_path` the renderer's fast path (BatchNorm folded,
    channels-last-3d) with the fused tail on (`warp_tail`: its kernel under --kernels triton, its reference
    otherwise), gated alike."""
    from flashtalk.models.liveportrait.optimized import fold_batchnorms
    from flashtalk.models.liveportrait.warping_channels_last import ChannelsLastWarpingNetwork

    inputs = (d["in_feature_3d"], d["in_kp_driving"], d["in_kp_source"])
    net = build("warping_module")
    out = net(*inputs)
    arrays = {"out_out": out["out"], "out_deformation": out["deformation"], "out_occlusion_map": out["occlusion_map"]}
    if fast_path:
        fold_batchnorms(net)  # in place: the published network has run
        fast = ChannelsLastWarpingNetwork(net, fused_tail=True)(*inputs, return_deformation=False)
        arrays.update({f"out_out{FAST}": fast["out"], f"out_occlusion_map{FAST}": fast["occlusion_map"]})
    return arrays


def _spade(d: Arrays, build) -> Arrays:
    return {"out_image": build("spade_generator")(d["in_feature"])}


def _stitching(d: Arrays, build) -> Arrays:
    s = build("stitching_retargeting_module")
    x_s, x_d = d["in_kp_source"], d["in_kp_driving"]
    return {
        "out_stitch_delta": s.stitch_delta(x_s, x_d),
        "out_kp_driving_stitched": s.stitch(x_s, x_d),
        "out_eye_delta": s.retarget_eye_delta(x_s, d["in_eye_ratio"]),
        "out_lip_delta": s.retarget_lip_delta(x_s, d["in_lip_ratio"]),
    }


def _keypoint_transform(d: Arrays, build) -> Arrays:
    out = {
        "pitch": d["in_pitch_logits"],
        "yaw": d["in_yaw_logits"],
        "roll": d["in_roll_logits"],
        "kp": d["in_kp"],
        "exp": d["in_exp"],
        "t": d["in_t"],
        "scale": d["in_scale"],
    }
    post = motion_postprocess(out)
    a = d["in_angles_deg"]
    return {
        "out_pitch_deg": post["pitch_deg"],
        "out_yaw_deg": post["yaw_deg"],
        "out_roll_deg": post["roll_deg"],
        "out_R": post["R"],
        "out_x": post["x"],
        "out_R_from_angles": kpm.rotation_from_degrees(a[:, 0], a[:, 1], a[:, 2]),
    }


def _motion(d: Arrays, who: str) -> kpm.Motion:
    R = kpm.rotation_from_degrees(d[f"in_{who}_pitch"], d[f"in_{who}_yaw"], d[f"in_{who}_roll"])
    return kpm.Motion(R=R, exp=d[f"in_{who}_exp"], scale=d[f"in_{who}_scale"], t=d[f"in_{who}_t"])


def _motion_compose(d: Arrays, build) -> Arrays:
    s = build("stitching_retargeting_module")
    src, drv = _motion(d, "src"), _motion(d, "drv")
    ref = kpm.Motion(R=drv.R[:1], exp=drv.exp[:1], scale=drv.scale[:1], t=drv.t[:1])
    x_c = d["in_src_kp"]
    x_s = kpm.transform_keypoints(x_c, src.R, src.exp, src.scale, src.t)
    x_pose = kpm.compose_relative(x_c, src, drv, ref)
    m = kpm.motion_multiplier(x_s, x_pose[:1])
    x_expr = kpm.expression_friendly(x_pose, x_pose[:1], x_s, m)
    return {
        "out_R_s": src.R,
        "out_x_s": x_s,
        "out_motion_multiplier": m.reshape(()),
        "out_x_d_pose": x_pose,
        "out_x_d_pose_stitched": s.stitch(x_s, x_pose),
        "out_x_d_expr": x_expr,
        "out_x_d_expr_stitched": s.stitch(x_s, x_expr),
    }


def _grid_sample_5d(d: Arrays, build) -> Arrays:
    return {
        "out": F.grid_sample(d["in_input"], d["in_grid"], mode="bilinear", padding_mode="zeros", align_corners=False)
    }
