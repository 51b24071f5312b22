"""Pallas kernels, each with a pure-jnp reference and a dispatch (see ../shared/DESIGN.md), and
the fused CPU attention (cpu_attention.cc, an XLA FFI call; cpu_attention.py builds it).

The folder sits at the repository's top level and is the package `unimodal_jax.kernels` (through
the link unimodal_jax/kernels), so an install puts it under unimodal_jax/ rather than as a
site-packages package with a name as generic as `kernels`."""
from unimodal_jax.kernels.flash_attention import flash_attention
from unimodal_jax.kernels.vq_lookup import vq_lookup

__all__ = ["flash_attention", "vq_lookup"]
