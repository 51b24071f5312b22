"""Bias-free linear layers, x [..., in] @ kernel [in, out], with a hand-written gradient on CPU.

Why: a weight gradient dW = x^T @ g contracts over the token axis, the major axis of both x and
the output gradient g. XLA's CPU backend handles that by materializing g a second time,
transposed, fused with whatever produced it: for the vocabulary head that meant computing the
softmax part of the loss gradient twice over [tokens, vocab] (on the issue-8 benchmark, 2,048
tokens x 8,192 vocabulary, the head and loss backward took 305 ms, against 120 ms here), and in
the MLP a transposed copy of the SiLU gradient per layer. The custom VJP computes dW with the
activation transposed explicitly ([in, tokens], the smaller operand when `out` is large) and kept
so by an optimization barrier, and dx = g @ kernel^T likewise, so g is read in the layout it was
written. On TPU/GPU (including TPU programs compiled ahead of time from a CPU host) XLA's own
gradient is used: the barriers would only constrain its layout and sharding choices there.

`Linear`'s parameter is that of a bias-free nn.Dense ("kernel", [in, out]), so checkpoints and
the Hugging Face converters see no difference.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from unimodal_jax.models.attention import target_platform


def _matmul(x, kernel):
  return jnp.einsum("...i,io->...o", x, kernel)


@jax.custom_vjp
def _matmul_explicit_grad(x, kernel):
  return _matmul(x, kernel)


def _forward(x, kernel):
  return _matmul(x, kernel), (x, kernel)


def _backward(residuals, g):
  x, kernel = residuals
  g2 = g.reshape(-1, g.shape[-1])  # [N, out]
  x_t = jax.lax.optimization_barrier(x.reshape(-1, x.shape[-1]).T)  # [in, N]
  kernel_t = jax.lax.optimization_barrier(kernel.T)  # [out, in]
  d_x = (g2 @ kernel_t).reshape(x.shape).astype(x.dtype)
  d_kernel = (x_t @ g2).astype(kernel.dtype)
  return d_x, d_kernel


_matmul_explicit_grad.defvjp(_forward, _backward)


def linear(x, kernel):
  """x [..., in] @ kernel [in, out]; on a CPU target with the explicit gradient above."""
  if target_platform() == "cpu":
    return _matmul_explicit_grad(x, kernel)
  return _matmul(x, kernel)


class Linear(nn.Module):
  """A bias-free dense layer onto `features` outputs, computed in `dtype` (nn.Dense's params)."""
  features: int
  dtype: Any
  param_dtype: Any
  kernel_init: Callable

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features),
                        self.param_dtype)
    return linear(x.astype(self.dtype), kernel.astype(self.dtype))
