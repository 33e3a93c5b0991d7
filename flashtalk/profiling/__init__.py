"""Measurement tools: timers, a device peak table for roofline percentages, NVML telemetry.

Imports nothing above `flashtalk.kernels`; usable by the runtime, `flashtalk bench` and the benchmarks.
"""
