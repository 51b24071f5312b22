"""Small shared builders for tests."""
import flax.linen as nn
import jax

from unimodal_jax.models.decoder import Decoder
from unimodal_jax.models.decoder_config import DecoderConfig


def tiny_config(**overrides) -> DecoderConfig:
  fields = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_layers=3, num_heads=6,
                num_kv_heads=2, head_dim=8)
  fields.update(overrides)
  return DecoderConfig(**fields)


def init_params(config: DecoderConfig, seed: int = 0):
  model = Decoder(config)
  tokens = jax.numpy.zeros((1, 4), jax.numpy.int32)
  params = nn.meta.unbox(model.init(jax.random.key(seed), tokens)["params"])
  return model, params
