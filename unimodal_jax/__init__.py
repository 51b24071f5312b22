"""unimodal_jax: a JAX/Flax training stack for unified multimodal LLMs (ILLUME, DreamLLM).

Importing this package has no side effects; heavy modules load on first use.
"""

__version__ = "0.1.0"


def load_pretrained(directory, **kwargs):
  """`model, params = load_pretrained(dir)`: see `unimodal_jax.checkpoints.load_pretrained`."""
  from unimodal_jax.checkpoints import load_pretrained as _load
  return _load(directory, **kwargs)


__all__ = ["load_pretrained", "__version__"]
