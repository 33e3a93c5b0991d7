"""LivePortrait's own face pipeline, re-implemented from `docs/specs/faces.md`: SCRFD detection (det_10g), the
106-point landmarks (2d106det), the landmark-driven similarity crop, the 203-point refinement
(landmark.onnx) and the eye / lip open ratios, each step a pure NumPy / OpenCV function of the raw model
tensors so the ONNX sessions can be swapped for stored tensors (golden tests) or small synthetic models.

Modules: `crop` (size limit, oriented square, crop matrices, driving boxes), `detector` (letterbox, blob,
anchors, decode, NMS, face order), `landmark106`, `landmark203`, `ratios`, `onnx_models` (session loading
and signature checks) and `pipeline` (the source-image and driving-video flows).
"""
