"""Pallas kernels, each with a pure-jnp reference and a dispatch (see DESIGN.md)."""
