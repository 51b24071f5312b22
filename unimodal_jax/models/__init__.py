"""Pure-functional Flax Linen models, one concept per file."""
from unimodal_jax.models.decoder import Decoder, init_cache
from unimodal_jax.models.decoder_config import DecoderConfig

__all__ = ["Decoder", "DecoderConfig", "init_cache"]
