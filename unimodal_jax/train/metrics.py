"""Throughput, MFU, the terminal progress line and TensorBoard event files."""
from __future__ import annotations

import functools
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

# Dense bf16 peak per device, vendor figures; CPUs are measured instead (see measure_peak_flops).
PEAK_FLOPS = {"TPU v4": 275e12, "TPU v5": 459e12, "TPU v5p": 459e12, "TPU v5 lite": 197e12,
              "TPU v5e": 197e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12,
              "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12}


def measure_peak_flops(n: int = 1024, repeats: int = 5) -> float:
  """Float32 matrix-multiply FLOP/s of one device, measured (median of `repeats`)."""
  a = jnp.ones((n, n), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * n**3 / float(np.median(times))


def peak_flops_per_device(override: float = 0.0) -> tuple[float, str]:
  """(FLOP/s, where the figure came from) for MFU."""
  if override:
    return float(override), "config"
  kind = jax.devices()[0].device_kind
  for name, flops in PEAK_FLOPS.items():
    if kind.startswith(name):
      return flops, f"vendor peak of {kind}"
  return measure_peak_flops(), f"measured f32 matmul peak of {kind}"


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# The default logger of training runs: a line at a time, flushed, so redirected logs keep up.
print_flushed = functools.partial(print, flush=True)


class Progress:
  """One line per logging interval: step, loss, gradient norm, the shown metrics, items
  (tokens, examples) per second, MFU when the FLOPs per item are known, ETA (process 0 only)."""

  def __init__(self, total_steps: int, start_step: int, flops_per_item: float, peak_flops: float,
               num_devices: int, enabled: bool = True, log=print_flushed, unit: str = "tok",
               shown: tuple[str, ...] = ()):
    self.total, self.enabled, self.unit, self.shown = total_steps, enabled, unit, shown
    self.flops_per_item, self.peak = flops_per_item, peak_flops * num_devices
    self.log = log  # the caller's logger: the main job prefixes each line with its phase
    self.last_step, self.last_time = start_step, time.perf_counter()
    self.items_since = 0

  def add(self, n: int):
    self.items_since += n

  def report(self, step: int, metrics: dict) -> dict:
    now = time.perf_counter()
    elapsed = max(now - self.last_time, 1e-9)
    steps = max(step - self.last_step, 1)
    items_per_s = self.items_since / elapsed
    mfu = items_per_s * self.flops_per_item / self.peak
    eta = (self.total - step) * elapsed / steps
    out = {"items_per_s": items_per_s, "mfu": mfu, "step_time_s": elapsed / steps}
    if self.enabled:
      extra = f" | skipped {int(metrics['nonfinite_steps'])}" if metrics.get("nonfinite_steps") else ""
      shown = "".join(f" | {k} {metrics[k]:.4f}" for k in self.shown if k in metrics)
      mfu_text = f" | MFU {100 * mfu:.1f}%" if self.flops_per_item else ""
      self.log(f"step {step:>6}/{self.total} | loss {metrics['loss']:.4f} | "
               f"grad {metrics['grad_norm']:.3f}{shown} | {items_per_s:,.0f} {self.unit}/s"
               f"{mfu_text} | ETA {_duration(eta)}{extra}")
    self.last_step, self.last_time, self.items_since = step, now, 0
    return out


class TensorBoard:
  """Scalars to TensorBoard event files in WORKDIR/tensorboard (process 0 only)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.writer = None
    if enabled:
      from tensorboardX import SummaryWriter
      self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=10)

  def scalars(self, step: int, values: dict, prefix: str = ""):
    if self.writer is None:
      return
    for name, value in values.items():
      self.writer.add_scalar(prefix + name, float(value), step)

  def close(self):
    if self.writer is not None:
      self.writer.flush()
      self.writer.close()
