"""The whole ILLUME recipe in one resumable command (python -m unimodal_jax.pipeline)."""
