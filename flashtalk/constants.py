"""Constants of the whole engine, defined once (standard library only; importable from every layer)."""

MODEL_RATE = 16000  # Hz: the audio rate of every model
FPS = 25  # content frame rate
HOP = MODEL_RATE // FPS  # 16-kHz samples per frame
FRAME_SIZE = 512  # output crop side in pixels
WATERMARK_KEY = "flashtalk-public"  # the watermark key used unless told otherwise
LATENCY_MODES = ("low", "exact")  # streaming window schedules (flashtalk.runtime.windows)
DEFAULT_BUDGET_S = 0.2  # a realtime frame's latency budget: audio (and look-ahead) in -> frame rendered
DEFAULT_HEADROOM = 0.2  # capacity kept free of committed realtime load (measurement noise, bursts, motion)
SAMPLERS = ("dpmpp", "ddim", "ddpm")  # motion sampler names on the CLI / API (dpmpp = DPM-Solver++(2M))
DEFAULT_SAMPLER = "dpmpp"
PRESETS = ("liveportrait", "tiny")  # network sizes (flashtalk.weights.presets.Preset.from_name)
