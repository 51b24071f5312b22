"""models/matmul_grad_conv.py: the convolution whose kernel gradient is an im2col matmul gives
lax's values and both gradients, for the strides and paddings the U-Net and the VAE use, falls
back to lax where it does not apply, and a U-Net built with it computes what the XLA one does."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from unimodal_jax.models import matmul_grad_conv, unet as unet_lib

NHWC = ("NHWC", "HWIO", "NHWC")


def _loss(conv_fn, **kw):
  # sin: a cotangent that varies across positions and channels
  return lambda k, x: jnp.sum(jnp.sin(conv_fn(x, k, **kw)) * jnp.cos(x.sum()))


@pytest.mark.parametrize("kernel,strides,padding", [
    (3, (1, 1), ((1, 1), (1, 1))),   # the ResNet blocks' 3x3
    (3, (2, 2), ((0, 1), (0, 1))),   # the VAE's asymmetric downsample
    (3, (2, 2), ((1, 1), (1, 1))),   # the U-Net's downsample
    (1, (1, 1), ((0, 0), (0, 0))),   # shortcuts and projections
    (3, (1, 1), "SAME"),
])
def test_values_and_both_gradients_match_lax(kernel, strides, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 9, 8, 5)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(kernel, kernel, 5, 7)), jnp.float32)
  kw = dict(window_strides=strides, padding=padding, dimension_numbers=NHWC,
            precision=lax.Precision.HIGHEST)
  ours = matmul_grad_conv.conv_general_dilated(x, k, **kw)
  ref = lax.conv_general_dilated(x, k, **kw)
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
  g_ours = jax.grad(_loss(matmul_grad_conv.conv_general_dilated, **kw), argnums=(0, 1))(k, x)
  g_ref = jax.grad(_loss(lax.conv_general_dilated, **kw), argnums=(0, 1))(k, x)
  for a, b in zip(g_ours, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_grouped_and_dilated_convolutions_fall_back_to_lax():
  x = jnp.ones((1, 6, 6, 4))
  k = jnp.ones((3, 3, 2, 4))
  got = matmul_grad_conv.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)),
                                              dimension_numbers=NHWC, feature_group_count=2)
  want = lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC,
                                  feature_group_count=2)
  np.testing.assert_array_equal(got, want)
  k = jnp.ones((3, 3, 4, 4))
  got = matmul_grad_conv.conv_general_dilated(x, k, (1, 1), ((2, 2), (2, 2)), rhs_dilation=(2, 2),
                                              dimension_numbers=NHWC)
  want = lax.conv_general_dilated(x, k, (1, 1), ((2, 2), (2, 2)), rhs_dilation=(2, 2),
                                  dimension_numbers=NHWC)
  np.testing.assert_array_equal(got, want)


def test_flax_conv_takes_it_only_inside_the_choice():
  with matmul_grad_conv.kernel_gradient("matmul_grad"):
    assert matmul_grad_conv.selected() is matmul_grad_conv.conv_general_dilated
  assert matmul_grad_conv.selected() is None  # restored on exit: "xla", flax's default
  with pytest.raises(ValueError, match="conv_impl='im2col'"):
    with matmul_grad_conv.kernel_gradient("im2col"):
      pass
  with pytest.raises(ValueError, match="unet.conv_impl"):
    unet_lib.UNetConfig(conv_impl="fast")


def test_a_unet_with_matmul_kernel_gradients_is_the_same_function():
  kw = dict(sample_size=8, in_channels=12, out_channels=12, block_out_channels=[16, 16],
            down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], layers_per_block=1,
            num_attention_heads=[2, 2], cross_attention_dim=8, norm_num_groups=8,
            attention_impl="xla")
  xla = unet_lib.UNet(unet_lib.UNetConfig(**kw))
  mm = unet_lib.UNet(unet_lib.UNetConfig(**kw, conv_impl="matmul_grad"))
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 12)), jnp.float32)
  t = jnp.asarray([3, 700])
  c = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32)
  params = xla.init(jax.random.key(0), x, t, c)["params"]

  def loss(model):
    return lambda p: jnp.mean(jnp.square(model.apply({"params": p}, x, t, c) - x))

  np.testing.assert_allclose(mm.apply({"params": params}, x, t, c),
                             xla.apply({"params": params}, x, t, c), rtol=1e-5, atol=1e-5)
  g_mm = jax.grad(loss(mm))(params)
  g_xla = jax.grad(loss(xla))(params)
  flat = jax.tree_util.tree_leaves_with_path(g_xla)
  assert any("conv" in jax.tree_util.keystr(p) for p, _ in flat)
  for (path, a), b in zip(flat, jax.tree.leaves(g_mm)):
    np.testing.assert_allclose(b, a, rtol=2e-4, atol=2e-6, err_msg=jax.tree_util.keystr(path))
