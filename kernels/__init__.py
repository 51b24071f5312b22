"""Pallas kernels, each with a pure-jnp reference and a dispatch (see ../shared/DESIGN.md)."""
from kernels.flash_attention import flash_attention
from kernels.vq_lookup import vq_lookup

__all__ = ["flash_attention", "vq_lookup"]
