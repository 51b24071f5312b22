"""The diffusion pixel decoder: sampler math against an exact velocity field, guidance
identities, and learning a conditional distribution, for both denoisers (DiT and conv)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unimodal_jax.models import pixel_decoder as pd

CFG = pd.PixelDecoderConfig(architecture="dit", image_size=8, patch_size=4, hidden_size=32,
                            num_layers=2, num_heads=2, cond_dim=8, cond_tokens=2,
                            spatial_cond=False)
# The conv denoiser needs a square grid of condition tokens: one token is a 1 x 1 grid.
CONV_CFG = pd.PixelDecoderConfig(architecture="conv", image_size=8, patch_size=2, hidden_size=16,
                                 num_layers=2, cond_blocks=1, cond_dim=8, cond_tokens=1)
# Both architectures; the DiT compiles slowly here, so the default suite runs the conv decoder
# (the shipped one) and -m slow the DiT.
BOTH_DIT_SLOW = pytest.mark.parametrize(
    "cfg", [pytest.param(CFG, id="dit", marks=pytest.mark.slow), pytest.param(CONV_CFG, id="conv")])


def test_euler_sampler_reaches_the_data_with_the_exact_velocity():
  """For data concentrated on one image x*, the flow-matching velocity is (x_t - x*) / t;
  integrating it from noise must land on x* (up to the first step's 1/t)."""
  target = jnp.linspace(-1, 1, 2 * 8 * 8 * 3).reshape(2, 8, 8, 3)
  velocity = lambda x, t: (x - target) / jnp.maximum(t, 1e-6)[:, None, None, None]
  noise = jax.random.normal(jax.random.key(0), target.shape)
  out = pd.euler_sample(velocity, noise, steps=16)
  np.testing.assert_allclose(out, target, atol=1e-5)


def test_patchify_round_trip():
  x = jax.random.normal(jax.random.key(1), (3, 8, 8, 3))
  np.testing.assert_array_equal(pd.unpatchify(pd.patchify(x, 4), 4, 8, 3), x)


def _init(cfg=CFG):
  decoder = pd.PixelDecoder(cfg)
  x = jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.channels))
  cond = jnp.zeros((1, cfg.cond_tokens, cfg.cond_dim))
  params = nn.meta.unbox(decoder.init(jax.random.key(0), x, jnp.zeros((1,)), cond)["params"])
  return decoder, params


@BOTH_DIT_SLOW
def test_guidance_identities(cfg):
  decoder, params = _init(cfg)
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(2), p.shape),
                        params)  # zero-initialized outputs would make every identity trivial
  x = jax.random.normal(jax.random.key(3), (2, 8, 8, 3))
  t = jnp.array([0.3, 0.8])
  cond = jax.random.normal(jax.random.key(4), (2, cfg.cond_tokens, 8))
  v_cond = decoder.apply({"params": params}, x, t, cond)
  v_null = decoder.apply({"params": params}, x, t, None)
  assert float(jnp.abs(v_cond - v_null).max()) > 1e-3
  for w in (0.0, 1.0, 3.0):
    v = pd.guided_velocity(decoder, params, cond, w)(x, t)
    np.testing.assert_allclose(v, v_null + w * (v_cond - v_null), atol=1e-5)


@BOTH_DIT_SLOW
def test_learns_a_conditional_distribution(cfg):
  """Two conditions, each owning one solid-color image: after training, samples for each
  condition have that condition's color (guidance sharpens it)."""
  colors = jnp.array([[230, 40, 40], [40, 40, 230]], jnp.uint8)
  images = jnp.broadcast_to(colors[:, None, None, :], (2, 8, 8, 3))
  conds = jnp.stack([jnp.full((cfg.cond_tokens, 8), 1.0), jnp.full((cfg.cond_tokens, 8), -1.0)])
  decoder, params = _init(cfg)
  tx = optax.adam(3e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, rng):
    idx = jax.random.randint(rng, (16,), 0, 2)
    loss, grads = jax.value_and_grad(lambda p: pd.flow_matching_loss(
        decoder, p, images[idx], conds[idx], jax.random.fold_in(rng, 1)))(params)
    updates, opt = tx.update(grads, opt)
    return optax.apply_updates(params, updates), opt, loss

  losses = []
  for i in range(300):
    params, opt, loss = step(params, opt, jax.random.key(i))
    losses.append(float(loss))
  assert np.mean(losses[-30:]) < 0.5 * np.mean(losses[:30])
  out = pd.sample(decoder, params, conds, jax.random.key(7), steps=16, guidance=2.0)
  mean_color = np.asarray(out, np.float32).mean(axis=(1, 2))
  assert mean_color[0, 0] > mean_color[0, 2] + 100  # red for condition 0
  assert mean_color[1, 2] > mean_color[1, 0] + 100  # blue for condition 1


def test_config_errors():
  with pytest.raises(ValueError, match="image_size=30 is not a multiple of patch_size=4"):
    pd.PixelDecoderConfig(image_size=30, patch_size=4)
  with pytest.raises(ValueError, match="spatial_cond needs the 9 condition tokens to be a "
                     "square grid dividing the 8x8 patch grid"):
    pd.PixelDecoderConfig(architecture="dit", image_size=32, patch_size=4, cond_tokens=9)
  with pytest.raises(ValueError, match="'conv' needs the 2 condition tokens to be a square grid"):
    pd.PixelDecoderConfig(architecture="conv", image_size=32, patch_size=4, cond_tokens=2)
  with pytest.raises(ValueError, match="architecture='unet'; expected one of"):
    pd.PixelDecoderConfig(architecture="unet")
  assert pd.PixelDecoderConfig().architecture == "conv"


def test_spatial_condition_lands_on_the_patches_of_its_cell():
  """4 condition cells over a 4x4 patch grid: patch (r, c) gets cell (r // 2, c // 2)."""
  cells = jnp.arange(4, dtype=jnp.float32)[None, :, None] * jnp.ones((1, 4, 3))
  patches = np.asarray(pd.cells_to_patches(cells, 2, 4))[0, :, 0].reshape(4, 4)
  np.testing.assert_array_equal(patches, [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3],
                                          [2, 2, 3, 3]])
  # The positions start from the 2-D sine-cosine table, cells on the frame of their patches.
  cfg = pd.PixelDecoderConfig(image_size=16, patch_size=4, hidden_size=16, cond_tokens=4,
                              cond_dim=8)
  pos = pd._position_init(cfg)(None, (4 + 16, 16))
  cell0, patches0 = np.asarray(pos[0]), np.asarray(pos[4:]).reshape(4, 4, 16)
  centre = (patches0[0, 0] + patches0[1, 1]) / 2
  assert np.abs(cell0 - centre).max() < np.abs(cell0 - patches0[3, 3]).max()


@BOTH_DIT_SLOW
def test_sampler_shapes_and_determinism(cfg):
  decoder, params = _init(cfg)
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(5), p.shape),
                        params)
  cond = jax.random.normal(jax.random.key(6), (3, cfg.cond_tokens, 8))
  a = pd.sample(decoder, params, cond, jax.random.key(9), steps=4, guidance=1.5)
  b = pd.sample(decoder, params, cond, jax.random.key(9), steps=4, guidance=1.5)
  c = pd.sample(decoder, params, cond, jax.random.key(10), steps=4, guidance=1.5)
  assert a.shape == (3, 8, 8, 3) and a.dtype == jnp.uint8
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
