"""unimodal_jax: a JAX/Flax training stack for unified multimodal LLMs (ILLUME, DreamLLM).

Importing this package has no side effects; heavy modules load on first use.
"""

__version__ = "0.1.0"


def load_pretrained(directory, **kwargs):
  """`model, params = load_pretrained(dir)`: see `unimodal_jax.checkpoints.load_pretrained`."""
  from unimodal_jax.checkpoints import load_pretrained as _load
  return _load(directory, **kwargs)


def load(directory):
  """`model = load(dir)`: a trained ILLUME or DreamLLM from its main job's workdir (or one stage
  directory), with `.generate_image`, `.answer` and `.edit`; see `unimodal_jax.trained_model`."""
  from unimodal_jax.trained_model import load as _load
  return _load(directory)


__all__ = ["load", "load_pretrained", "__version__"]
