"""Background NVML sampling during a benchmark case: power, clocks, utilisation, memory, temperature,
throttle reasons. Without a GPU or without nvidia-ml-py, `NvmlSampler.unavailable` says why and the
sampler records nothing (never an exception)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class NvmlSummary:
    available: bool
    reason: str = ""
    samples: int = 0
    power_w_mean: float | None = None
    power_w_max: float | None = None
    sm_clock_mhz_mean: float | None = None
    mem_clock_mhz_mean: float | None = None
    gpu_util_pct_mean: float | None = None
    mem_used_gib_max: float | None = None
    temperature_c_max: float | None = None
    throttle_reasons: list[str] = field(default_factory=list)
    driver: str | None = None


_THROTTLE_NAMES = {
    0x1: "gpu_idle",
    0x2: "applications_clocks",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal",
    0x40: "hw_thermal",
    0x80: "hw_power_brake",
    0x100: "display_clocks",
}


class NvmlSampler:
    """Use as a context manager around a case; `summary()` afterwards."""

    def __init__(self, device_index: int = 0, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.unavailable: str | None = None
        self._rows: list[tuple[float, ...]] = []
        self._throttle = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._driver: str | None = None
        try:
            import pynvml  # provided by nvidia-ml-py

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
            driver = pynvml.nvmlSystemGetDriverVersion()
            self._driver = driver.decode() if isinstance(driver, bytes) else str(driver)
        except ImportError:
            self.unavailable = "nvidia-ml-py is not installed"
        except Exception as exc:  # NVML raises its own error types; any failure means "no telemetry"
            self.unavailable = f"NVML unavailable: {exc}"

    def _sample(self) -> None:
        n, h = self._nvml, self._handle
        while not self._stop.is_set():
            try:
                util = n.nvmlDeviceGetUtilizationRates(h)
                self._rows.append(
                    (
                        n.nvmlDeviceGetPowerUsage(h) / 1000.0,
                        float(n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)),
                        float(n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM)),
                        float(util.gpu),
                        n.nvmlDeviceGetMemoryInfo(h).used / 2**30,
                        float(n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU)),
                    )
                )
                self._throttle |= int(n.nvmlDeviceGetCurrentClocksThrottleReasons(h))
            except Exception as exc:  # stop sampling on the first NVML failure, and say so
                self.unavailable = f"NVML sampling failed: {exc}"
                return
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "NvmlSampler":
        if self.unavailable is None:
            self._thread = threading.Thread(target=self._sample, name="nvml-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def summary(self) -> NvmlSummary:
        if self.unavailable is not None and not self._rows:
            return NvmlSummary(False, self.unavailable)
        if not self._rows:
            return NvmlSummary(True, "no samples (case shorter than the sampling interval)", driver=self._driver)
        cols = list(zip(*self._rows))
        mean = lambda c: sum(c) / len(c)  # noqa: E731
        reasons = [name for bit, name in _THROTTLE_NAMES.items() if self._throttle & bit and name != "gpu_idle"]
        return NvmlSummary(
            True,
            self.unavailable or "",
            len(self._rows),
            mean(cols[0]),
            max(cols[0]),
            mean(cols[1]),
            mean(cols[2]),
            mean(cols[3]),
            max(cols[4]),
            max(cols[5]),
            reasons,
            self._driver,
        )
