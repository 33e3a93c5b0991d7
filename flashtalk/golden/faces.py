"""Golden family "faces": every file kind of `golden/faces/README.md`, gated by its tolerance table.

Model calls are replaced by the raw tensors stored in each file (stub callables that also record what
they were fed). Our own intermediates flow down each chain, so a later stage is tested on our earlier
outputs; the blob / input-tensor checks that the README conditions on "identical uint8 images" are
computed from the golden images.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from flashtalk.faces import crop as C
from flashtalk.faces import detector, landmark106, landmark203, ratios
from flashtalk.faces.pipeline import FaceModels, driving_crops, source_face
from flashtalk.golden.verify import Result

# README "Recommended tolerances"
PX = 1e-3  # boxes, key points, 106 landmarks, crop centre, driving boxes
PT_CROP = 2e-3  # landmarks in crop pixels; 203 landmarks
MAP = 2e-3  # crop matrices: mapped crop corners + centre, source px
ANGLE, SIZE_RTOL, BLOB, RATIO_RTOL, RATIO_DEGENERATE_RTOL = 1e-5, 1e-5, 1e-6, 1e-5, 1e-3
TIER_A = (2e-3, 5e-4, 16)  # warped images with OpenCV: frac(|d|>0), frac(|d|>1), max|d|


class Checker:
    def __init__(self, file: str) -> None:
        self.file, self.results = file, []

    def _add(self, name: str, err: float, rel: float, limit: float, ok: bool, note: str = "") -> None:
        self.results.append(Result(self.file, name, float(err), float(rel), float(limit), bool(ok), note))

    def _shape(self, name: str, ours: np.ndarray, ref: np.ndarray) -> bool:
        if np.shape(ours) != np.shape(ref):
            self._add(name, np.inf, np.inf, 0, False, f"shape {np.shape(ours)} != {np.shape(ref)}")
            return False
        return True

    def abs(self, name: str, ours, ref, atol: float) -> None:
        ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
        if self._shape(name, ours, ref):
            err = float(np.abs(ours - ref).max()) if ref.size else 0.0
            peak = float(np.abs(ref).max()) if ref.size else 0.0
            self._add(name, err, err / peak if peak else err, atol, err <= atol and np.isfinite(ours).all())

    def exact(self, name: str, ours, ref) -> None:
        self.abs(name, ours, ref, 0.0)

    def rel(self, name: str, ours, ref, rtol, atol: float = 0.0) -> None:
        """|ours - ref| <= atol + rtol·|ref| elementwise; rtol may be an array broadcast over ref."""
        ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
        if self._shape(name, ours, ref):
            d = np.abs(ours - ref)
            r = d / np.maximum(np.abs(ref), 1e-300)
            ok = bool((d <= atol + np.asarray(rtol) * np.abs(ref)).all())
            self._add(name, d.max(), r.max(), float(np.max(rtol)), ok)

    def image(self, name: str, ours, ref) -> None:
        if self._shape(name, ours, ref):
            d = np.abs(np.asarray(ours, np.int32) - np.asarray(ref, np.int32))
            f0, f1, mx = float((d > 0).mean()), float((d > 1).mean()), int(d.max())
            ok = f0 <= TIER_A[0] and f1 <= TIER_A[1] and mx <= TIER_A[2]
            self._add(
                name, mx, f0, TIER_A[2], ok, f"frac>0 {f0:.2e} (<= {TIER_A[0]:g}), frac>1 {f1:.2e} (<= {TIER_A[1]:g})"
            )

    def o2c(self, name: str, M_o2c, ref_o2c, dsize: int) -> None:
        """An image -> crop matrix, checked through its inverse like M_c2o."""
        self.mapping(
            name, np.linalg.inv(np.asarray(M_o2c, np.float64)), np.linalg.inv(np.asarray(ref_o2c, np.float64)), dsize
        )

    def mapping(self, name: str, M_c2o, ref_c2o, dsize: int) -> None:
        """Crop corners and centre mapped to the source by both matrices."""
        q = np.array(
            [[0, 0], [dsize - 1, 0], [0, dsize - 1], [dsize - 1, dsize - 1], [dsize / 2, dsize / 2]], np.float64
        )
        self.abs(
            name,
            C.transform_points(q, np.asarray(M_c2o, np.float64)),
            C.transform_points(q, np.asarray(ref_c2o, np.float64)),
            MAP,
        )


class Stub:
    """A model callable returning stored tensors in call order, recording its inputs."""

    def __init__(self, outputs: list) -> None:
        self.outputs, self.inputs = outputs, []

    def __call__(self, x: np.ndarray):
        self.inputs.append(x)
        return self.outputs[len(self.inputs) - 1]


def _det_raw(d, prefix: str) -> list[np.ndarray]:
    return [d[f"{prefix}{kind}_{s}"] for kind in ("score", "bbox", "kps") for s in detector.STRIDES]


def _runner_out(raw_out2: np.ndarray) -> list:
    return [None, None, raw_out2]


def check_resize(ck: Checker, d, images) -> None:
    cases = d["shape_cases_in_h_w_maxdim_division"]
    got = [C.resize_to_limit_shape(int(h), int(w), int(m), int(k))[1] for h, w, m, k in cases]
    ck.exact("shape_cases_out_h_w", got, d["shape_cases_out_h_w"])
    i = 0
    while f"px{i}_out" in d:
        img = images[str(d[f"px{i}_image_key"])]
        ck.exact(
            f"px{i}_out", C.resize_to_limit(img, int(d[f"px{i}_max_dim"]), int(d[f"px{i}_division"])), d[f"px{i}_out"]
        )
        i += 1


def check_crop_source(ck: Checker, d, images) -> None:
    img, lmk = images[str(d["image_key"])], d["lmk"]
    params = C.CropParams(int(d["dsize"]), float(d["scale"]), float(d["vy_ratio"]), bool(d["flag_do_rot"]))
    ck.abs("pt2", C.eye_lip_centres(lmk), d["pt2"], PX)
    sq = C.oriented_square(lmk, params.scale, params.vy)
    ck.abs("center", sq.center, d["center"], PX)
    ck.rel("size", [sq.side, sq.side], d["size"], SIZE_RTOL)
    ck.abs("angle", sq.angle, d["angle"], ANGLE)
    c = C.crop_image(img, lmk, params)
    ck.mapping(
        "M_o2c", np.linalg.inv(c.M_o2c.astype(np.float64)), np.linalg.inv(d["M_o2c"].astype(np.float64)), params.dsize
    )
    ck.mapping("M_c2o", c.M_c2o, d["M_c2o"], params.dsize)
    ck.abs("pt_crop", c.pt_crop, d["pt_crop"], PT_CROP)
    ck.image("img_crop", c.image, d["img_crop"])
    ck.image("img_crop_256x256", C.area_256(c.image), d["img_crop_256x256"])


def check_chain(ck: Checker, d, images) -> None:
    img = images[str(d["image_key"])]
    size = int(d["det_size"][0])
    det = Stub([_det_raw(d, "det_raw_")])
    l106 = Stub([r[None] for r in d["l106_raw"]])
    l203 = Stub([_runner_out(d["l203_raw_out2"])])
    models = FaceModels(det, l106, l203, det_thresh=float(d["det_thresh"]))
    canvas, scale = detector.letterbox(img[..., ::-1], size)
    ck.exact("det_img_bgr", canvas, d["det_img_bgr"])
    ck.rel("det_scale", scale, d["det_scale"], 1e-12)
    if "det_blob" in d:
        ck.abs("det_blob", detector.blob(d["det_img_bgr"]), d["det_blob"], BLOB)
    face = source_face(img, models)
    found = face.detected
    dets = found.detections
    ck.abs("det_cand_sorted", dets.cand_sorted, d["det_cand_sorted"], PX)
    ck.exact("det_keep", dets.keep, d["det_keep"])
    ck.abs("det_dets", dets.dets, d["det_dets"], PX)
    ck.abs("det_kpss", dets.kpss, d["det_kpss"], PX)
    ck.exact("sorted_large_small_det_index", found.order, d["sorted_large_small_det_index"])
    ck.exact("picked_det_index", found.picked, d["picked_det_index"])
    ck.abs("l106_bbox", dets.dets[:, :4], d["l106_bbox"], PX)
    ck.rel("l106_scale", [a.scale for a in found.alignments], d["l106_scale"], SIZE_RTOL)
    q = np.array(
        [[0, 0], [img.shape[1] - 1, 0], [0, img.shape[0] - 1], [img.shape[1] / 2, img.shape[0] / 2]], np.float64
    )
    ck.abs(
        "l106_M",
        [C.transform_points(q, a.M) for a in found.alignments],
        [C.transform_points(q, m) for m in d["l106_M"]],
        PX,
    )
    ck.image("l106_aimg_bgr", np.stack([a.aimg_bgr for a in found.alignments]), d["l106_aimg_bgr"])
    ck.abs("l106_blob", np.concatenate([landmark106.to_blob(a) for a in d["l106_aimg_bgr"]]), d["l106_blob"], BLOB)
    ck.abs(
        "l106_lmk",
        np.stack([landmark106.decode(r[None], a.M) for r, a in zip(d["l106_raw"], found.alignments)]),
        d["l106_lmk"],
        PX,
    )
    ck.abs("crop_lmk106", found.lmk106[found.picked], d["crop_lmk106"], PX)
    ck.mapping("crop_M_c2o", face.crop.M_c2o, d["crop_M_c2o"], 512)
    ck.o2c("crop_M_o2c", face.crop.M_o2c, d["crop_M_o2c"], 512)
    ck.abs("crop_pt_crop", face.crop.pt_crop, d["crop_pt_crop"], PT_CROP)
    ck.image("crop_img_crop", face.crop.image, d["crop_img_crop"])
    ck.image("crop_img_crop_256x256", face.crop_256, d["crop_img_crop_256x256"])
    ck.mapping("l203_M_c2o", face.runner.M_c2o, d["l203_M_c2o"], 224)
    ck.o2c("l203_M_o2c", face.runner.M_o2c, d["l203_M_o2c"], 224)
    ck.image("l203_img_crop_rgb", face.runner.img_crop_rgb, d["l203_img_crop_rgb"])
    ck.abs("l203_input", landmark203.prepare_input(d["l203_img_crop_rgb"]), d["l203_input"], BLOB)
    ck.abs("l203_lmk", face.lmk203, d["l203_lmk"], PT_CROP)
    ck.abs("lmk_crop", face.lmk203, d["lmk_crop"], PT_CROP)
    ck.abs("lmk_crop_256x256", face.lmk203 * np.float32(256 / 512), d["lmk_crop_256x256"], PT_CROP)
    ck.rel("eye_ratio", face.eye_ratio, d["eye_ratio"], RATIO_RTOL)
    ck.rel("lip_ratio", face.lip_ratio, d["lip_ratio"], RATIO_RTOL)


def check_scrfd(ck: Checker, d, images) -> None:
    img = images[str(d["image_key"])][..., ::-1]
    size = int(d["det_size"][0])
    canvas, scale = detector.letterbox(img, size)
    ck.exact("det_img_bgr", canvas, d["det_img_bgr"])
    ck.rel("det_scale", scale, d["det_scale"], 1e-12)
    for s in detector.STRIDES:
        ck.exact(f"anchor_centers_{s}", detector.anchor_centers(size, s), d[f"anchor_centers_{s}"])
    raw = _det_raw(d, "raw_")
    kw = dict(thresh=float(d["det_thresh"]), nms_thresh=float(d["nms_thresh"]), size=size)
    r = detector.postprocess(raw, scale, img.shape[:2], **kw)
    ck.abs("cand_sorted", r.cand_sorted, d["cand_sorted"], PX)
    ck.exact("cand_sorted[:, 4] (scores)", r.cand_sorted[:, 4], d["cand_sorted"][:, 4])
    ck.abs("cand_kps_sorted", r.cand_kps_sorted, d["cand_kps_sorted"], PX)
    ck.exact("keep", r.keep, d["keep"])
    ck.abs("dets", r.dets, d["dets"], PX)
    ck.abs("kpss", r.kpss, d["kpss"], PX)
    for metric, key in (("default", "maxnum_default"), ("max", "maxnum_max")):
        m = detector.postprocess(raw, scale, img.shape[:2], max_num=int(d["max_num"]), metric=metric, **kw)
        ck.abs(f"dets_{key}", m.dets, d[f"dets_{key}"], PX)
        ck.abs(f"kpss_{key}", m.kpss, d[f"kpss_{key}"], PX)


def check_driving(ck: Checker, d, images) -> None:
    frames = list(d["frames"])
    l203 = Stub([_runner_out(r[None]) for r in d["runner_raw_out2"]])
    models = FaceModels(Stub([]), Stub([]), l203)
    out = driving_crops(frames, models, seed106=d["lmk106_frame0"])
    for t, p in enumerate(out.runner):
        ck.o2c(f"runner_M_o2c[{t}]", p.M_o2c, d["runner_M_o2c"][t], 224)
    ck.image("runner_img_crop", np.stack([p.img_crop_rgb for p in out.runner]), d["runner_img_crop"])
    ck.abs("runner_input_frame0", landmark203.prepare_input(d["runner_img_crop"][0]), d["runner_input_frame0"], BLOB)
    ck.abs("lmk203", out.lmk203, d["lmk203"], PT_CROP)
    squares = [C.oriented_square(p, float(d["scale"]), float(d["vy_ratio"])) for p in out.lmk203]
    ck.abs("parse_center", [s.center for s in squares], d["parse_center"], PX)
    ck.rel("parse_size", [[s.side, s.side] for s in squares], d["parse_size"], SIZE_RTOL)
    ck.abs("parse_angle", [s.angle for s in squares], d["parse_angle"], ANGLE)
    corners = [[[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]]] for b in out.boxes]
    ck.abs("parse_bbox", corners, d["parse_bbox"], PX)
    ck.abs("bbox_xyxy_per_frame", out.boxes, d["bbox_xyxy_per_frame"], PX)
    ck.abs("global_bbox", out.box, d["global_bbox"], PX)
    for t, c in enumerate(out.crops):
        ck.mapping(f"M_c2o[{t}]", c.M_c2o, d["M_c2o"][t], 512)
        ck.o2c(f"M_o2c[{t}]", c.M_o2c, d["M_o2c"][t], 512)
    ck.image("img_crop", np.stack([c.image for c in out.crops]), d["img_crop"])
    ck.abs("lmk_crop", np.stack([c.pt_crop for c in out.crops]), d["lmk_crop"], PT_CROP)
    ck.image("img_crop_256x256", out.crops_256, d["img_crop_256x256"])
    ck.rel("eye_ratio", out.eye_ratio, d["eye_ratio"], RATIO_RTOL)
    ck.rel("lip_ratio", out.lip_ratio, d["lip_ratio"], RATIO_RTOL)


def check_runner(ck: Checker, d, images) -> None:
    img = images[str(d["image_key"])]
    p = landmark203.prepare(img, d["lmk_in"])
    ck.mapping("M_c2o", p.M_c2o, d["M_c2o"], 224)
    ck.o2c("M_o2c", p.M_o2c, d["M_o2c"], 224)
    ck.image("img_crop_rgb", p.img_crop_rgb, d["img_crop_rgb"])
    ck.abs("input", landmark203.prepare_input(d["img_crop_rgb"]), d["input"], BLOB)
    ck.abs("lmk203", landmark203.refine(img, d["lmk_in"], Stub([_runner_out(d["raw_out2"])])), d["lmk203"], PT_CROP)
    if "none_input" in d:
        none = landmark203.prepare(img, None)
        ck.abs("none_input", none.input, d["none_input"], BLOB)
        ck.abs(
            "none_lmk203",
            landmark203.refine(img, None, Stub([_runner_out(d["none_raw_out2"])])),
            d["none_lmk203"],
            PT_CROP,
        )


def check_ratios(ck: Checker, d, images) -> None:
    lmk = d["lmk203"]
    eye, lip = ratios.eye_ratio(lmk), ratios.lip_ratio(lmk)
    # rows with a near-zero denominator (coincident eye corners / mouth corners) get the README's rtol 1e-3
    eye_w = np.stack(
        [np.linalg.norm(lmk[:, 0] - lmk[:, 12], axis=1), np.linalg.norm(lmk[:, 24] - lmk[:, 36], axis=1)], 1
    )
    lip_w = np.linalg.norm(lmk[:, 48] - lmk[:, 66], axis=1)[:, None]
    ck.rel("eye_ratio", eye, d["eye_ratio"], np.where(eye_w < 1e-3, RATIO_DEGENERATE_RTOL, RATIO_RTOL))
    ck.rel("lip_ratio", lip, d["lip_ratio"], np.where(lip_w < 1e-3, RATIO_DEGENERATE_RTOL, RATIO_RTOL))
    src, drv = d["pairs_src_drv"][:, 0], d["pairs_src_drv"][:, 1]
    ce = np.concatenate([ratios.combined_eye(eye[s : s + 1], eye[v : v + 1]) for s, v in zip(src, drv)])
    cl = np.concatenate([ratios.combined_lip(lip[s : s + 1], lip[v : v + 1]) for s, v in zip(src, drv)])
    ok_rows = (eye_w[src].min(1) >= 1e-3)[:, None]
    ck.rel("combined_eye", ce, d["combined_eye"], np.where(ok_rows, RATIO_RTOL, RATIO_DEGENERATE_RTOL))
    ck.rel("combined_lip", cl, d["combined_lip"], RATIO_RTOL)
    ck.rel(
        "normalize_lip_input",
        ratios.combined_lip(lip[src], np.zeros_like(lip[src])),
        d["normalize_lip_input"],
        RATIO_RTOL,
    )
    ck.exact("normalize_lip_applies", lip[src, 0] >= float(d["lip_normalize_threshold"]), d["normalize_lip_applies"])
    frame0 = eye[src].mean(axis=1)
    ck.rel("src_video_eye_frame0", frame0, d["src_video_eye_frame0"], RATIO_RTOL)
    ck.rel("src_video_eye_used", [ratios.source_video_eye(eye[s]) for s in src], d["src_video_eye_used"], RATIO_RTOL)
    ck.exact("gradio_source_eye_ratio", [round(float(e.mean()), 2) for e in eye[src]], d["gradio_source_eye_ratio"])
    ck.exact("gradio_source_lip_ratio", [round(float(v[0]), 2) for v in lip[src]], d["gradio_source_lip_ratio"])


KINDS = (
    ("resize_to_limit", check_resize),
    ("crop_source_", check_crop_source),
    ("chain_", check_chain),
    ("scrfd_", check_scrfd),
    ("crop_driving_video", check_driving),
    ("lmk203_runner_", check_runner),
    ("ratios", check_ratios),
)


def _cases(folder: Path, only: list[str] | None) -> Iterator[tuple[str, object]]:
    for path in sorted(folder.glob("*.npz")):
        if path.name == "images.npz" or (only and not any(o in path.name for o in only)):
            continue
        kind = next((fn for prefix, fn in KINDS if path.name.startswith(prefix)), None)
        yield path.name, kind


def check(folder: str | Path, only: list[str] | None = None) -> list[Result]:
    """Every .npz of a faces golden folder -> one Result per gated array (unknown files fail)."""
    from flashtalk.errors import FlashTalkError

    folder = Path(folder)
    images = dict(np.load(folder / "images.npz"))
    results: list[Result] = []
    for name, kind in _cases(folder, only):
        ck = Checker(name)
        if kind is None:
            ck._add("(file)", np.inf, np.inf, 0, False, "unknown file kind")
        else:
            kind(ck, np.load(folder / name), images)
        results += ck.results
    if not results:
        raise FlashTalkError(f"no golden case selected in {folder}")
    return results
