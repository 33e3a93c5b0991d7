"""Small ONNX models with the published signatures of LivePortrait's three face files (onnx.helper,
synthetic weights), written in the published folder layout.

* det_10g: input `input.1` [1, 3, h, w] -> 9 outputs (scores, boxes, key points for strides 8, 16, 32).
  Only stride 32 fires: score = sigmoid(8 * mean of the cell's R plane - 4), so a white 64-px block
  aligned to the 32-px grid of the 512 canvas is one face; every box reaches 3 strides (96 px) from
  its anchor.
* 2d106det: `data` [N, 3, 192, 192] -> `fc1` [N, 212]: a fixed layout (LAYOUT_106, in [-1, 1]); its
  first nodes subtract and multiply (named like insightface expects of a self-normalising model).
* landmark.onnx: `input` [1, 3, 224, 224] -> 3 outputs, the third [1, 406]: LAYOUT_203 in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DET, L106, L203 = (
    "insightface/models/buffalo_l/det_10g.onnx",
    "insightface/models/buffalo_l/2d106det.onnx",
    "liveportrait/landmark.onnx",
)


def _layout_106() -> np.ndarray:
    rng = np.random.default_rng(106)
    p = rng.uniform(-0.4, 0.4, (106, 2))
    for idx, cx in (((33, 35, 40, 39), -0.25), ((87, 89, 94, 93), 0.25)):
        for k, i in enumerate(idx):
            p[i] = (cx + 0.05 * np.cos(k * np.pi / 2), -0.2 + 0.03 * np.sin(k * np.pi / 2))
    p[52], p[61] = (-0.15, 0.3), (0.15, 0.3)
    return p.astype(np.float32)


def _layout_203() -> np.ndarray:
    rng = np.random.default_rng(203)
    p = rng.uniform(0.3, 0.7, (203, 2))
    for start, cx, open_ in ((0, 0.35, 0.02), (24, 0.65, 0.03)):  # 24 points per eye contour
        for k in range(24):
            a = 2 * np.pi * k / 24
            p[start + k] = (cx - 0.08 * np.cos(a), 0.4 - open_ * np.sin(a))
    for k in range(42):  # outer then inner lip; 48 / 66 corners, 90 / 102 inner mid-points
        p[48 + k] = (0.5 - 0.1 * np.cos(2 * np.pi * k / 36), 0.7 - 0.03 * np.sin(2 * np.pi * k / 36))
    p[48], p[66] = (0.4, 0.7), (0.6, 0.7)
    p[90], p[102] = (0.5, 0.69), (0.5, 0.71)
    return p.astype(np.float32)


LAYOUT_106, LAYOUT_203 = _layout_106(), _layout_203()


def _dist(p, i, j) -> float:
    return float(np.hypot(*(p[i].astype(np.float64) - p[j])))


# what the ratios must be (a similarity maps the layout to image pixels; ratios are invariant)
EYE_RATIO = (_dist(LAYOUT_203, 6, 18) / _dist(LAYOUT_203, 0, 12), _dist(LAYOUT_203, 30, 42) / _dist(LAYOUT_203, 24, 36))
LIP_RATIO = _dist(LAYOUT_203, 90, 102) / _dist(LAYOUT_203, 48, 66)


def _model(nodes, inputs, outputs, inits, name):
    from onnx import helper

    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _t(name: str, a: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(a, dtype=np.float32), name)


def _i64(name: str, a) -> object:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(a, dtype=np.int64), name)


def det_model(input_name: str = "input.1"):
    from onnx import TensorProto, helper

    nodes, inits, outs = [], [], {}
    inits.append(_i64("shape1", [-1, 1]))
    inits.append(_i64("shape4", [-1, 4]))
    inits.append(_i64("shape10", [-1, 10]))
    for s in (8, 16, 32):
        for kind, width, fill in (("score", 1, None), ("bbox", 4, 3.0), ("kps", 10, 0.0)):
            w = np.zeros((2 * width, 3, s, s), np.float32)
            b = np.full(2 * width, fill if fill is not None else -30.0, np.float32)
            if kind == "score" and s == 32:
                w[:, 0] = 8.0 / (s * s)
                b[:] = -4.0
            inits += [_t(f"w_{kind}{s}", w), _t(f"b_{kind}{s}", b)]
            conv, act = f"conv_{kind}{s}", f"act_{kind}{s}"
            nodes.append(
                helper.make_node(
                    "Conv", [input_name, f"w_{kind}{s}", f"b_{kind}{s}"], [conv], kernel_shape=[s, s], strides=[s, s]
                )
            )
            src = conv
            if kind == "score":
                nodes.append(helper.make_node("Sigmoid", [conv], [act]))
                src = act
            nodes.append(helper.make_node("Transpose", [src], [f"tr_{kind}{s}"], perm=[0, 2, 3, 1]))
            name = f"{kind}_{s}"
            nodes.append(helper.make_node("Reshape", [f"tr_{kind}{s}", f"shape{width}"], [name]))
            outs[name] = helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", width])
    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 3, "h", "w"])
    order = [outs[f"{k}_{s}"] for k in ("score", "bbox", "kps") for s in (8, 16, 32)]
    return _model(nodes, [x], order, inits, "det_10g_synthetic")


def _constant_head(
    input_name, in_shape, bias: np.ndarray, out_names, out_shape_last, extra_outputs=0, self_normalising=False
):
    from onnx import TensorProto, helper

    nodes, src = [], input_name
    if self_normalising:  # 2d106det subtracts and scales inside the graph (insightface reads the node names)
        nodes += [
            helper.make_node("Sub", [input_name, "zero"], ["centred"], name="_minus0"),
            helper.make_node("Mul", ["centred", "one"], ["scaled"], name="_mul0"),
        ]
        src = "scaled"
    nodes += [
        helper.make_node("GlobalAveragePool", [src], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], [out_names[-1]]),
    ]
    inits = [
        _t("w", np.zeros((3, bias.size), np.float32)),
        _t("b", bias.reshape(-1)),
        _t("zero", np.zeros(1, np.float32)),
        _t("one", np.ones(1, np.float32)),
    ]
    outputs = []
    for k in range(extra_outputs):
        nodes.append(helper.make_node("Identity", ["flat"], [out_names[k]]))
        outputs.append(helper.make_tensor_value_info(out_names[k], TensorProto.FLOAT, ["n", 3]))
    outputs.append(helper.make_tensor_value_info(out_names[-1], TensorProto.FLOAT, ["n", out_shape_last]))
    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, in_shape)
    return _model(nodes, [x], outputs, inits, "head_synthetic")


def l106_model(input_name: str = "data", self_normalising: bool = True):
    return _constant_head(input_name, ["n", 3, 192, 192], LAYOUT_106, ["fc1"], 212, self_normalising=self_normalising)


def l203_model(input_name: str = "input"):
    return _constant_head(input_name, [1, 3, 224, 224], LAYOUT_203, ["out0", "out1", "out2"], 406, extra_outputs=2)


def write_face_models(folder: Path, **overrides) -> Path:
    """The three synthetic models under `folder` in the published layout; overrides: key -> model."""
    import onnx

    models = {"det": det_model(), "l106": l106_model(), "l203": l203_model(), **overrides}
    for key, rel in (("det", DET), ("l106", L106), ("l203", L203)):
        path = Path(folder) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(models[key], str(path))
    return Path(folder)


def face_image(blocks=((192, 192),), size=(512, 512)) -> np.ndarray:
    """Black RGB image with a white 64x64 block at each (x, y) top-left (multiples of 32 = one face each)."""
    img = np.zeros((size[1], size[0], 3), np.uint8)
    for x, y in blocks:
        img[y : y + 64, x : x + 64] = 255
    return img
