"""Stable Diffusion's schedules and samplers in JAX against diffusers 0.42's schedulers:
the betas, forward process, targets, DDIM and Euler timesteps and steps, and the guided
sampling loop, for epsilon and v prediction."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unimodal_jax.diffusion import schedules as ds

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
# diffusers 0.42 calls np.array(tensor) in EulerDiscreteScheduler, which numpy 2 warns about.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
          beta_schedule="scaled_linear")
PRED = pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
SHAPE = (2, 8, 8, 4)


def _ddpm(prediction_type):
  return diffusers.DDPMScheduler(**SD, prediction_type=prediction_type)


def _ddim(prediction_type):
  return diffusers.DDIMScheduler(**SD, prediction_type=prediction_type, clip_sample=False,
                                 set_alpha_to_one=False, steps_offset=1,
                                 timestep_spacing="leading")


def _euler(prediction_type):
  return diffusers.EulerDiscreteScheduler(**SD, prediction_type=prediction_type,
                                          timestep_spacing="leading", steps_offset=1,
                                          interpolation_type="linear", use_karras_sigmas=False)


def _randn(seed, shape=SHAPE):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _nchw(x):
  """diffusers is layout-agnostic for these ops; give it NCHW anyway, as SD uses."""
  return torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(x), (0, 3, 1, 2))))


def _nhwc(x):
  return np.transpose(x.numpy(), (0, 2, 3, 1))


def _maxdiff(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.mark.parametrize("beta_schedule,beta_start,beta_end",
                         [("scaled_linear", 0.00085, 0.012), ("linear", 0.0001, 0.02)])
def test_betas_and_alphas_cumprod_are_bit_identical(beta_schedule, beta_start, beta_end):
  schedule = ds.make_schedule(beta_start=beta_start, beta_end=beta_end,
                              beta_schedule=beta_schedule)
  ref = diffusers.DDPMScheduler(beta_start=beta_start, beta_end=beta_end,
                                beta_schedule=beta_schedule)
  assert schedule.betas.dtype == schedule.alphas_cumprod.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(schedule.betas), ref.betas.numpy())
  np.testing.assert_array_equal(np.asarray(schedule.alphas_cumprod), ref.alphas_cumprod.numpy())


@PRED
def test_add_noise_velocity_and_target_match_ddpm_scheduler(prediction_type):
  schedule = ds.make_schedule(**SD, prediction_type=prediction_type)
  ref = _ddpm(prediction_type)
  x0, noise = _randn(0), _randn(1)
  t = np.array([3, 987], np.int32)
  noisy = ds.add_noise(schedule, jnp.asarray(x0), jnp.asarray(noise), jnp.asarray(t))
  want = ref.add_noise(_nchw(x0), _nchw(noise), torch.from_numpy(t.astype(np.int64)))
  assert _maxdiff(noisy, _nhwc(want)) <= 1e-6
  v = ds.velocity(schedule, jnp.asarray(x0), jnp.asarray(noise), jnp.asarray(t))
  want_v = ref.get_velocity(_nchw(x0), _nchw(noise), torch.from_numpy(t.astype(np.int64)))
  assert _maxdiff(v, _nhwc(want_v)) <= 1e-6
  target = ds.training_target(schedule, jnp.asarray(x0), jnp.asarray(noise), jnp.asarray(t))
  want_target = {"epsilon": noise, "v_prediction": v, "sample": x0}[prediction_type]
  np.testing.assert_array_equal(target, want_target)


@pytest.mark.parametrize("n", [10, 50])
def test_timesteps_match_set_timesteps(n):
  schedule = ds.make_schedule(**SD)
  ddim, euler = _ddim("epsilon"), _euler("epsilon")
  ddim.set_timesteps(n)
  euler.set_timesteps(n)
  np.testing.assert_array_equal(np.asarray(ds.ddim_timesteps(schedule, n)), ddim.timesteps)
  sigmas, timesteps = ds.euler_sigmas_and_timesteps(schedule, n)
  assert sigmas.dtype == timesteps.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(timesteps), euler.timesteps.numpy())
  # torch's float32 sqrt (AVX2) is not correctly rounded: it can be 1 ulp off jnp.sqrt.
  np.testing.assert_allclose(np.asarray(sigmas), euler.sigmas.numpy(), rtol=3e-7, atol=0)
  np.testing.assert_allclose(np.asarray(ds.euler_init_noise_sigma(sigmas)),
                             euler.init_noise_sigma.numpy(), rtol=3e-7, atol=0)


@PRED
@pytest.mark.parametrize("n", [10, 50])
def test_every_ddim_step_matches(prediction_type, n):
  schedule = ds.make_schedule(**SD, prediction_type=prediction_type)
  ref = _ddim(prediction_type)
  ref.set_timesteps(n)
  step = jax.jit(ds.ddim_step, static_argnums=(4,))
  worst = 0.0
  for i, t in enumerate(ref.timesteps):  # every step, the last one past t = 0 included
    sample, out = _randn(2 * i), _randn(2 * i + 1)
    got = step(schedule, jnp.asarray(out), jnp.int32(int(t)), jnp.asarray(sample), n)
    want = ref.step(_nchw(out), t, _nchw(sample)).prev_sample
    worst = max(worst, _maxdiff(got, _nhwc(want)))
  assert worst <= 1e-5, worst


@PRED
@pytest.mark.parametrize("n", [10, 50])
def test_every_euler_step_and_input_scaling_matches(prediction_type, n):
  schedule = ds.make_schedule(**SD, prediction_type=prediction_type)
  ref = _euler(prediction_type)
  ref.set_timesteps(n)
  sigmas, _ = ds.euler_sigmas_and_timesteps(schedule, n)
  scale = jax.jit(ds.euler_scale_model_input)
  step = jax.jit(ds.euler_step, static_argnums=(4,))
  worst_scale = worst_step = 0.0
  for i, t in enumerate(ref.timesteps):
    sample, out = _randn(2 * i) * 10, _randn(2 * i + 1)
    scaled = ref.scale_model_input(_nchw(sample), t)
    worst_scale = max(worst_scale, _maxdiff(scale(jnp.asarray(sample), sigmas[i]),
                                            _nhwc(scaled)))
    want = ref.step(_nchw(out), t, _nchw(sample)).prev_sample
    got = step(jnp.asarray(out), jnp.asarray(sample), sigmas[i], sigmas[i + 1], prediction_type)
    worst_step = max(worst_step, _maxdiff(got, _nhwc(want)))
  assert worst_scale <= 1e-5, worst_scale
  assert worst_step <= 1e-5, worst_step


# A fake linear 'UNet': depends on the input, the timestep and the condition, so the guidance
# mixing, the batching of the halves and the timestep dtype all matter.
_W = 0.5
_COND_DIM = 4


def _fake_denoiser_jax(x, t, cond):
  return _W * x + 0.3 * cond[:, None, None, :] + 1e-3 * t.astype(jnp.float32)[:, None, None, None]


def _fake_denoiser_torch(x, t, cond):  # NCHW
  return _W * x + 0.3 * cond[:, :, None, None] + 1e-3 * t.to(torch.float32)[:, None, None, None]


@PRED
@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_guided_sampling_loop_matches_diffusers(prediction_type, sampler):
  n, scale = 5, 3.0
  schedule = ds.make_schedule(**SD, prediction_type=prediction_type)
  noise = _randn(7)
  cond, uncond = _randn(8, (2, _COND_DIM)), _randn(9, (2, _COND_DIM))
  run = jax.jit(lambda nz, c, u: ds.sample(_fake_denoiser_jax, schedule, nz, c, u,
                                           sampler=sampler, num_steps=n, guidance_scale=scale))
  got = np.asarray(run(jnp.asarray(noise), jnp.asarray(cond), jnp.asarray(uncond)))

  ref = (_ddim if sampler == "ddim" else _euler)(prediction_type)
  ref.set_timesteps(n)
  latents = _nchw(noise) * ref.init_noise_sigma
  both = torch.from_numpy(np.concatenate([uncond, cond]))
  for t in ref.timesteps:  # diffusers' StableDiffusionPipeline loop
    latent_in = ref.scale_model_input(torch.cat([latents] * 2), t)
    pred = _fake_denoiser_torch(latent_in, t.expand(4), both)
    pred_uncond, pred_cond = pred.chunk(2)
    pred = pred_uncond + scale * (pred_cond - pred_uncond)
    latents = ref.step(pred, t, latents).prev_sample
  want = _nhwc(latents)
  rel = _maxdiff(got, want) / float(np.max(np.abs(want)))
  assert rel <= 1e-4, rel


def test_unguided_sampling_calls_the_model_once_per_example():
  schedule = ds.make_schedule(**SD)
  seen = []

  def fn(x, t, cond):
    seen.append((x.shape, t.shape, t.dtype))
    return jnp.zeros_like(x)
  out = ds.sample(fn, schedule, jnp.ones(SHAPE), jnp.zeros((2, 4)), sampler="euler", num_steps=3)
  assert out.shape == SHAPE and seen == [(SHAPE, (2,), jnp.float32)]


@PRED
def test_min_snr_weights_and_loss(prediction_type):
  schedule = ds.make_schedule(**SD, prediction_type=prediction_type)
  t = np.array([0, 10, 200, 500, 999], np.int32)
  abar = np.asarray(schedule.alphas_cumprod, np.float64)[t]
  snr = abar / (1 - abar)
  # Relative to the x0 loss, the epsilon loss carries a factor SNR, the v loss SNR + 1.
  x0_factor = {"epsilon": snr, "v_prediction": snr + 1, "sample": 1.0}[prediction_type]
  want = np.minimum(snr, 5.0) / x0_factor
  weights = ds.min_snr_weights(schedule, jnp.asarray(t), gamma=5.0)
  np.testing.assert_allclose(ds.snr(schedule, jnp.asarray(t)), snr, rtol=1e-5)
  np.testing.assert_allclose(weights, want, rtol=1e-5)

  shape = (5,) + SHAPE[1:]
  x0, noise, pred = _randn(1, shape), _randn(2, shape), _randn(3, shape)
  target = np.asarray(ds.training_target(schedule, jnp.asarray(x0), jnp.asarray(noise),
                                         jnp.asarray(t)), np.float64)
  per_example = np.mean((pred - target) ** 2, axis=(1, 2, 3))
  loss = ds.diffusion_loss(schedule, jnp.asarray(pred), jnp.asarray(x0), jnp.asarray(noise),
                           jnp.asarray(t))
  weighted = ds.diffusion_loss(schedule, jnp.asarray(pred), jnp.asarray(x0),
                               jnp.asarray(noise), jnp.asarray(t), min_snr_gamma=5.0)
  assert loss.dtype == weighted.dtype == jnp.float32 and loss.shape == ()
  np.testing.assert_allclose(loss, per_example.mean(), rtol=1e-5)
  np.testing.assert_allclose(weighted, (per_example * want).mean(), rtol=1e-5)


def test_bad_names_raise_value_errors_naming_them():
  with pytest.raises(ValueError, match="squaredcos_cap_v3"):
    ds.make_schedule(beta_schedule="squaredcos_cap_v3")
  with pytest.raises(ValueError, match="x0_prediction"):
    ds.make_schedule(prediction_type="x0_prediction")
  schedule = ds.make_schedule()
  with pytest.raises(ValueError, match="'dpm'.*ddim.*euler"):
    ds.sample(lambda x, t, c: x, schedule, jnp.zeros(SHAPE), jnp.zeros((2, 4)), sampler="dpm",
              num_steps=2)
