"""Stable Diffusion's DDPM noise schedule, training targets and samplers in pure JAX, matching
diffusers 0.42 (`DDPMScheduler`, `DDIMScheduler`, `EulerDiscreteScheduler`) with SD's config.

The schedule is a pytree of float32 arrays (plus static ints/strings), and every sampler step
is a pure function of arrays, so the whole sampling loop runs inside `jax.jit` / `lax.fori_loop`.
Images are NHWC; per-example timesteps t are int [B].

    schedule = make_schedule()                               # SD 1.x / 2.x betas
    x_t = add_noise(schedule, x0, noise, t)
    loss = diffusion_loss(schedule, unet(x_t, t, text), x0, noise, t, min_snr_gamma=5.0)
    images = sample(unet_fn, schedule, noise, text, null_text, sampler="ddim", num_steps=50,
                    guidance_scale=7.5)

Conventions shared with diffusers (and their SD configs), kept here on purpose:
  * 'leading' timestep spacing with steps_offset=1: for 50 steps t = 981, 961, ..., 1;
  * DDIM with set_alpha_to_one=False: the step after t=1 uses alphas_cumprod[0], not 1, so the
    last DDIM step leaves a tiny amount of noise (SD's choice);
  * Euler works on sigma = sqrt((1 - abar) / abar), with a final sigma of 0, and starts from
    noise scaled by sqrt(sigma_max^2 + 1) (the 'leading' spacing's init_noise_sigma).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from unimodal_jax.models.model_config import ModelConfig

BETA_SCHEDULES = ("linear", "scaled_linear")
# What the network predicts: the noise, the velocity, or the clean sample x0 ("sample", as
# diffusers names it: for a narrow pixel-space U-Net, which cannot carry the noise through).
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SAMPLERS = ("ddim", "euler")


@flax.struct.dataclass
class DiffusionSchedule:
  """The discrete DDPM forward process: betas [N] and alphas_cumprod [N] (float32, abar_t =
  prod_{s<=t} (1 - beta_s)); the static fields say what the network predicts."""
  betas: jax.Array
  alphas_cumprod: jax.Array
  num_train_timesteps: int = flax.struct.field(pytree_node=False, default=1000)
  prediction_type: str = flax.struct.field(pytree_node=False, default="epsilon")


@dataclasses.dataclass(frozen=True)
class ScheduleConfig(ModelConfig):
  """A model config's DDPM schedule: make_schedule's arguments (defaults: SD-2.1-base's)."""
  SECTION = "model.schedule"
  num_train_timesteps: int = 1000
  beta_start: float = 0.00085
  beta_end: float = 0.012
  beta_schedule: str = "scaled_linear"
  prediction_type: str = "epsilon"

  def __post_init__(self):
    if self.beta_schedule not in BETA_SCHEDULES:
      raise ValueError(f"{self.SECTION}.beta_schedule={self.beta_schedule!r}; expected one of "
                       f"{BETA_SCHEDULES}")
    if self.prediction_type not in PREDICTION_TYPES:
      raise ValueError(f"{self.SECTION}.prediction_type={self.prediction_type!r}; expected one "
                       f"of {PREDICTION_TYPES}")

  def make(self) -> DiffusionSchedule:
    return make_schedule(self.num_train_timesteps, self.beta_start, self.beta_end,
                         self.beta_schedule, self.prediction_type)


def _torch_linspace_f32(start: float, end: float, num: int) -> np.ndarray:
  """float32 linspace rounded the way torch's CPU kernel rounds it (diffusers builds betas with
  torch.linspace): step = (end - start) / (num - 1) in float32, the first half counted up from
  start and the second half down from end, each value one fused multiply-add (a float64
  multiply-add is exact enough to reproduce it). np.linspace differs in the last bit."""
  start32, end32 = np.float32(start), np.float32(end)
  if num == 1:
    return np.array([start32], np.float32)
  step = np.float64((end32 - start32) / np.float32(num - 1))
  k = np.arange(num, dtype=np.float64)
  up = np.float64(start32) + step * k
  down = np.float64(end32) - step * (num - 1 - k)
  return np.where(k < num // 2, up, down).astype(np.float32)


def make_schedule(num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                  beta_end: float = 0.012, beta_schedule: str = "scaled_linear",
                  prediction_type: str = "epsilon") -> DiffusionSchedule:
  """The schedule diffusers builds from the same config (defaults: Stable Diffusion's).
  'scaled_linear' is linspace(sqrt(beta_start), sqrt(beta_end), N)**2, 'linear' is
  linspace(beta_start, beta_end, N), both float32; abar is accumulated in float64 and stored as
  float32, as torch.cumprod does on CPU, so both are bit-identical to diffusers'."""
  if beta_schedule == "scaled_linear":
    betas = _torch_linspace_f32(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps) ** 2
  elif beta_schedule == "linear":
    betas = _torch_linspace_f32(beta_start, beta_end, num_train_timesteps)
  else:
    raise ValueError(f"unknown beta_schedule {beta_schedule!r}; choose one of {BETA_SCHEDULES}")
  if prediction_type not in PREDICTION_TYPES:
    raise ValueError(
        f"unknown prediction_type {prediction_type!r}; choose one of {PREDICTION_TYPES}")
  alphas = np.float32(1.0) - betas
  alphas_cumprod = np.cumprod(alphas.astype(np.float64)).astype(np.float32)
  return DiffusionSchedule(betas=jnp.asarray(betas), alphas_cumprod=jnp.asarray(alphas_cumprod),
                           num_train_timesteps=num_train_timesteps,
                           prediction_type=prediction_type)


def _per_example(values, like):
  """A scalar, or a [B] vector reshaped to broadcast against `like` [B, ...]."""
  values = jnp.asarray(values)
  return values.reshape(values.shape + (1,) * (like.ndim - values.ndim)) if values.ndim else values


# ----------------------------------------------------------------------------- training (DDPM)

def _signal_and_noise_scales(schedule: DiffusionSchedule, t, like):
  """sqrt(abar_t) and sqrt(1 - abar_t) in `like`'s dtype, shaped to broadcast against it
  (diffusers casts abar to the sample's dtype before taking the roots)."""
  abar = _per_example(schedule.alphas_cumprod.astype(like.dtype)[t], like)
  return jnp.sqrt(abar), jnp.sqrt(1 - abar)


def add_noise(schedule: DiffusionSchedule, x0, noise, t):
  """The forward process q(x_t | x0): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
  signal, sigma = _signal_and_noise_scales(schedule, t, x0)
  return signal * x0 + sigma * noise


def velocity(schedule: DiffusionSchedule, x0, noise, t):
  """The v-prediction target (Salimans & Ho 2022): sqrt(abar_t) noise - sqrt(1 - abar_t) x0."""
  signal, sigma = _signal_and_noise_scales(schedule, t, x0)
  return signal * noise - sigma * x0


def training_target(schedule: DiffusionSchedule, x0, noise, t):
  """What the network should output at x_t: the noise (epsilon), the velocity, or x0."""
  if schedule.prediction_type == "epsilon":
    return noise
  if schedule.prediction_type == "sample":
    return x0
  return velocity(schedule, x0, noise, t)


def snr(schedule: DiffusionSchedule, t):
  """Signal-to-noise ratio abar_t / (1 - abar_t) per timestep (float32)."""
  abar = schedule.alphas_cumprod[t]
  return abar / (1 - abar)


def min_snr_weights(schedule: DiffusionSchedule, t, gamma: float = 5.0):
  """Min-SNR-gamma loss weights (Hang et al. 2023), which stop the low-noise timesteps from
  dominating: min(SNR, gamma) / SNR for an epsilon loss, min(SNR, gamma) / (SNR + 1) for a
  v loss, min(SNR, gamma) for an x0 loss (relative to the x0 loss, the epsilon loss carries a
  factor SNR and the v loss SNR + 1)."""
  ratio = snr(schedule, t)
  clipped = jnp.minimum(ratio, gamma)
  if schedule.prediction_type == "epsilon":
    return clipped / ratio
  if schedule.prediction_type == "sample":
    return clipped
  return clipped / (ratio + 1)


def diffusion_loss(schedule: DiffusionSchedule, prediction, x0, noise, t,
                   min_snr_gamma: float | None = None):
  """Mean over the batch of each example's mean squared error against `training_target`,
  each weighted by `min_snr_weights` when min_snr_gamma is given (float32)."""
  target = training_target(schedule, x0, noise, t).astype(jnp.float32)
  err = jnp.square(prediction.astype(jnp.float32) - target)
  per_example = jnp.mean(err, axis=tuple(range(1, err.ndim)))
  if min_snr_gamma is not None:
    per_example = per_example * min_snr_weights(schedule, t, min_snr_gamma)
  return jnp.mean(per_example)


# ----------------------------------------------------------------------------- DDIM

def _leading_timesteps(num_train_timesteps: int, num_inference_steps: int,
                       steps_offset: int) -> np.ndarray:
  """diffusers' 'leading' spacing: k * (N // n) for k = n-1 .. 0, plus the offset."""
  if not 0 < num_inference_steps <= num_train_timesteps:
    raise ValueError(f"num_inference_steps must be in [1, {num_train_timesteps}], "
                     f"got {num_inference_steps}")
  ratio = num_train_timesteps // num_inference_steps
  return np.arange(num_inference_steps)[::-1] * ratio + steps_offset


def ddim_timesteps(schedule: DiffusionSchedule, num_inference_steps: int,
                   steps_offset: int = 1):
  """The n timesteps DDIM visits, descending (int32 [n]); = DDIMScheduler.set_timesteps."""
  steps = _leading_timesteps(schedule.num_train_timesteps, num_inference_steps, steps_offset)
  return jnp.asarray(steps, jnp.int32)


def ddim_step(schedule: DiffusionSchedule, model_output, t, sample, num_inference_steps: int,
              set_alpha_to_one: bool = False):
  """One deterministic DDIM step (eta = 0, no clipping) from timestep t (a scalar or [B]) to
  t - N // n: recover x0 and epsilon from the prediction, then re-noise x0 to the previous
  level. Past t = 0 the previous level is abar_0 (SD) or 1 with set_alpha_to_one.
  = DDIMScheduler.step(...).prev_sample."""
  abar = schedule.alphas_cumprod
  t = jnp.asarray(t)
  prev_t = t - schedule.num_train_timesteps // num_inference_steps
  final = jnp.ones((), abar.dtype) if set_alpha_to_one else abar[0]
  abar_t = _per_example(abar[t], sample)
  abar_prev = _per_example(jnp.where(prev_t >= 0, abar[jnp.maximum(prev_t, 0)], final), sample)
  one_minus_t = 1 - abar_t
  x = sample.astype(jnp.float32)
  out = model_output.astype(jnp.float32)
  if schedule.prediction_type == "epsilon":
    x0 = (x - jnp.sqrt(one_minus_t) * out) / jnp.sqrt(abar_t)
    eps = out
  elif schedule.prediction_type == "sample":
    x0 = out
    eps = (x - jnp.sqrt(abar_t) * x0) / jnp.sqrt(one_minus_t)
  else:  # v_prediction
    x0 = jnp.sqrt(abar_t) * x - jnp.sqrt(one_minus_t) * out
    eps = jnp.sqrt(abar_t) * out + jnp.sqrt(one_minus_t) * x
  prev = jnp.sqrt(abar_prev) * x0 + jnp.sqrt(1 - abar_prev) * eps
  return prev.astype(sample.dtype)


# ----------------------------------------------------------------------------- Euler

def euler_sigmas_and_timesteps(schedule: DiffusionSchedule, num_inference_steps: int,
                               steps_offset: int = 1):
  """Euler's noise levels sigma_t = sqrt((1 - abar_t) / abar_t) at the 'leading' timesteps,
  with a final 0 appended (float32 [n + 1]), and those timesteps (float32 [n], what the model
  is called with); = EulerDiscreteScheduler.set_timesteps's sigmas and timesteps. diffusers
  interpolates the sigma table linearly at the timesteps; 'leading' timesteps are integers, so
  that is a lookup (clamped at N - 1, as np.interp clamps)."""
  n_train = schedule.num_train_timesteps
  steps = _leading_timesteps(n_train, num_inference_steps, steps_offset)
  abar = schedule.alphas_cumprod
  table = jnp.sqrt((1 - abar) / abar)
  sigmas = table[np.clip(steps, 0, n_train - 1)]
  sigmas = jnp.concatenate([sigmas, jnp.zeros((1,), sigmas.dtype)])
  return sigmas, jnp.asarray(steps, jnp.float32)


def euler_init_noise_sigma(sigmas):
  """Standard deviation of the starting noise for 'leading' spacing: sqrt(sigma_max^2 + 1)
  (x_t = x0 + sigma noise is scaled by 1 / sqrt(abar); unit noise must be scaled up)."""
  return jnp.sqrt(jnp.square(jnp.max(sigmas)) + 1)


def euler_scale_model_input(sample, sigma):
  """The network was trained on sqrt(abar) x_sigma = x_sigma / sqrt(sigma^2 + 1): rescale the
  Euler state before calling it. sigma: a scalar or [B]."""
  sigma = _per_example(sigma, sample)
  return sample / jnp.sqrt(jnp.square(sigma) + 1)


def euler_step(model_output, sample, sigma, sigma_next, prediction_type: str = "epsilon"):
  """One Euler step of the probability-flow ODE dx/dsigma = (x - x0_hat) / sigma from sigma to
  sigma_next (s_churn = 0, so deterministic), computed in float32 and returned in
  model_output's dtype; = EulerDiscreteScheduler.step(...).prev_sample."""
  if prediction_type not in PREDICTION_TYPES:
    raise ValueError(
        f"unknown prediction_type {prediction_type!r}; choose one of {PREDICTION_TYPES}")
  x = sample.astype(jnp.float32)
  out = model_output.astype(jnp.float32)
  sigma = _per_example(jnp.asarray(sigma, jnp.float32), x)
  sigma_next = _per_example(jnp.asarray(sigma_next, jnp.float32), x)
  if prediction_type == "epsilon":
    x0 = x - sigma * out
  elif prediction_type == "sample":
    x0 = out
  else:  # v_prediction: x0 = c_skip x + c_out v
    x0 = out * (-sigma / jnp.sqrt(jnp.square(sigma) + 1)) + x / (jnp.square(sigma) + 1)
  derivative = (x - x0) / sigma
  return (x + derivative * (sigma_next - sigma)).astype(model_output.dtype)


# ----------------------------------------------------------------------------- sampling loop

def sample(denoise_fn: Callable, schedule: DiffusionSchedule, noise, cond, uncond=None, *,
           sampler: str = "ddim", num_steps: int = 50, guidance_scale: float = 7.5):
  """Run a sampler from `noise` [B, H, W, C] (unit Gaussian) to a clean sample, as diffusers'
  SD pipeline does. denoise_fn(x, t, cond) -> prediction (of schedule.prediction_type) with
  t [2B] (int32 for DDIM, float32 for Euler, as diffusers feeds the UNet). With `uncond`,
  classifier-free guidance: one call on [uncond; cond] (both halves batched, any pytree of
  [B, ...] arrays), then pred = uncond + guidance_scale * (cond - uncond); without it, one
  unguided call per step. The loop is a lax.fori_loop over precomputed timestep arrays, so
  this jits (num_steps and sampler static)."""
  if sampler not in SAMPLERS:
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
  batch = noise.shape[0]
  if uncond is not None:
    both = jax.tree.map(lambda u, c: jnp.concatenate([u, c]), uncond, cond)

  def predict(x, t):
    if uncond is None:
      return denoise_fn(x, jnp.full((batch,), t), cond)
    out = denoise_fn(jnp.concatenate([x, x]), jnp.full((2 * batch,), t), both)
    out_uncond, out_cond = out[:batch], out[batch:]
    return out_uncond + guidance_scale * (out_cond - out_uncond)

  x = noise.astype(jnp.float32)
  if sampler == "ddim":
    timesteps = ddim_timesteps(schedule, num_steps)

    def ddim_body(i, x):
      t = timesteps[i]
      return ddim_step(schedule, predict(x, t), t, x, num_steps)
    return jax.lax.fori_loop(0, num_steps, ddim_body, x)

  sigmas, timesteps = euler_sigmas_and_timesteps(schedule, num_steps)

  def euler_body(i, x):
    sigma = sigmas[i]
    out = predict(euler_scale_model_input(x, sigma), timesteps[i])
    return euler_step(out, x, sigma, sigmas[i + 1], schedule.prediction_type)
  return jax.lax.fori_loop(0, num_steps, euler_body, x * euler_init_noise_sigma(sigmas))
