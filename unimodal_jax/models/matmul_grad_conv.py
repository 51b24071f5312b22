"""A convolution whose kernel gradient is one matmul over the input's patches (im2col), for
training convolutional models (the U-Net, the VAE) on XLA:CPU.

Why: XLA:CPU computes a convolution's kernel gradient about 20x slower than the convolution
itself (a 3x3, 64 -> 64 conv on [64, 32, 32, 64]: forward 87 ms, input gradient 180 ms, kernel
gradient 1,919 ms on this project's 2-core machine, 2026-11-26), which made a small U-Net train at
7 examples/s. Here the forward pass and the input gradient stay XLA's convolutions, and the kernel
gradient is patches(x)^T @ dy: a dot that XLA:CPU runs at full speed. TPUs and GPUs compute
kernel gradients well, so a model opts in from its config (`unet.conv_impl="matmul_grad"`, the
tiny CPU experiments' choice): the U-Net enters `kernel_gradient(cfg.conv_impl)` while it traces,
and diffusion_blocks.conv hands `selected()` to flax's nn.Conv as its `conv_general_dilated`.

Same values as lax.conv_general_dilated, forward and both gradients (tests/test_unet.py).
Grouped or dilated convolutions fall back to lax's own gradient.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools

import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("xla", "matmul_grad")
# The choice in force while a model traces (a context, so every block's nn.Conv need not carry it).
_IMPL = contextvars.ContextVar("conv_impl", default="xla")


@contextlib.contextmanager
def kernel_gradient(conv_impl: str):
  """Convolutions built inside use `conv_impl`: 'xla' (lax's own) or 'matmul_grad'."""
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f"conv_impl={conv_impl!r}; expected one of {CONV_IMPLS}")
  token = _IMPL.set(conv_impl)
  try:
    yield
  finally:
    _IMPL.reset(token)


def selected():
  """The `conv_general_dilated` for nn.Conv under the current choice (None: flax's default)."""
  return conv_general_dilated if _IMPL.get() == "matmul_grad" else None


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(x, kernel, strides, padding, dimension_numbers, precision):
  return lax.conv_general_dilated(x, kernel, strides, padding,
                                  dimension_numbers=dimension_numbers, precision=precision)


def _conv_fwd(x, kernel, strides, padding, dimension_numbers, precision):
  return _conv(x, kernel, strides, padding, dimension_numbers, precision), (x, kernel)


def _patches(x, kernel_hw, strides, padding):
  """[B, H', W', kh * kw * C] in (kh, kw, C) order, from strided slices of the padded input
  (slices and a concatenate: cheaper on XLA:CPU than lax.conv_general_dilated_patches, which is
  itself a convolution)."""
  (kh, kw), (sh, sw) = kernel_hw, strides
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  out_h = (xp.shape[1] - kh) // sh + 1
  out_w = (xp.shape[2] - kw) // sw + 1
  return jnp.concatenate([
      lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + (out_h - 1) * sh + 1,
                                   j + (out_w - 1) * sw + 1, xp.shape[3]), (1, sh, sw, 1))
      for i in range(kh) for j in range(kw)], axis=-1)


def _conv_bwd(strides, padding, dimension_numbers, precision, residuals, dy):
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda x_: lax.conv_general_dilated(
      x_, kernel, strides, padding, dimension_numbers=dimension_numbers, precision=precision), x)
  (dx,) = input_vjp(dy)
  kh, kw, cin, cout = kernel.shape
  patches = _patches(x, (kh, kw), strides, padding)
  dk = jnp.einsum("bhwp,bhwo->po", patches, dy.astype(patches.dtype), precision=precision)
  return dx, dk.reshape(kh, kw, cin, cout).astype(kernel.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(x, kernel, window_strides, padding, *, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs):
  """lax.conv_general_dilated's signature (what flax's nn.Conv calls); for NHWC inputs and HWIO
  kernels the kernel gradient is a matmul (module docstring), otherwise this is lax's."""
  nhwc = ("NHWC", "HWIO", "NHWC")
  plain = (x.ndim == 4 and feature_group_count == 1 and not kwargs
           and all(d == 1 for d in tuple(lhs_dilation or (1,)) + tuple(rhs_dilation or (1,)))
           and lax.conv_dimension_numbers(x.shape, kernel.shape, dimension_numbers)
           == lax.conv_dimension_numbers(x.shape, kernel.shape, nhwc))
  if not plain:
    return lax.conv_general_dilated(x, kernel, window_strides, padding, lhs_dilation=lhs_dilation,
                                    rhs_dilation=rhs_dilation,
                                    dimension_numbers=dimension_numbers,
                                    feature_group_count=feature_group_count, precision=precision,
                                    **kwargs)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], kernel.shape[:2], window_strides, padding)
  return _conv(x, kernel, tuple(window_strides), tuple(tuple(p) for p in padding), nhwc,
               precision)


__all__ = ["CONV_IMPLS", "kernel_gradient", "selected", "conv_general_dilated"]
