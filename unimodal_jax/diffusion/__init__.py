"""Stable Diffusion's noise schedules, training targets and samplers in pure JAX."""
