"""ILLUME's semantic tokenizer at paper scale: the shapes of the model, for building, sharding
and compiling it (../shared/reference/papers.md: 256 tokens per image, 16,384 codes, 512 x 512
output).

  encoder     the CLIP-L/14-shaped tower of experiments/illume/illume7b.py (224 px, 16 x 16 patch
              tokens of width 1024, its penultimate layer, as the LLM reads it); convert real
              weights with tools/convert_hf.py (CLIP / SigLIP checkpoints)
  tokenizer   1024-d features -> 32-d cosine codes (16,384, EMA, dead-code restarts; ILLUME+
              uses code dim 32) -> a 6-layer transformer that reconstructs the 1024-d features
  pixels      the conv diffusion decoder at 512 px on 32 px patches: its 16 x 16 patch grid is
              the 16 x 16 grid of tokens, so every token conditions the 32 x 32 pixels it covers.
              ILLUME renders with Stable Diffusion; a latent-space decoder is a later option.

    from experiments.illume import tokenizer
    tok_cfg, pixel_cfg = tokenizer.model_configs(tokenizer.get_config())

Training at this scale needs an image stream of real photos (not built yet): the tiny
counterparts experiments/tiny/tokenizer_shapes.py and tokenizer_digits.py train the same modules
end to end on this machine.
"""
import ml_collections

from experiments.illume import illume7b

IMAGE_SIZE = 512  # pixels out
TOKENS_PER_IMAGE = illume7b.TOKENS_PER_IMAGE  # 256 = 16 x 16
CODEBOOK_SIZE = 16_384


def get_config(arg=None):
  if arg not in (None, ""):
    raise ValueError(f"experiments/illume/tokenizer.py takes no variant (got {arg!r})")
  vision = illume7b.get_config(1).model.vision.to_dict()
  c = ml_collections.ConfigDict()
  c.encoder = dict(vision=vision, feature_layer=-2)
  c.tokenizer = dict(codebook_size=CODEBOOK_SIZE, code_dim=32, decoder_hidden=1024,
                     decoder_layers=6, decoder_heads=16, smooth_l1_weight=1.0, cosine_weight=1.0,
                     quantizer=dict(l2_normalized=True, ema_decay=0.99,
                                    dead_code_threshold=0.05, commitment_weight=0.25))
  c.pixel_decoder = dict(architecture="conv", image_size=IMAGE_SIZE, patch_size=32,
                         hidden_size=512, num_layers=8, cond_blocks=2, cond_dropout=0.1)
  c.sample = dict(steps=32, guidance=2.0)
  return c


def model_configs(config):
  """(SemanticTokenizerConfig, PixelDecoderConfig) for `config` (get_config's layout)."""
  from unimodal_jax.models import pixel_decoder, vision_tokenizer
  vision = config.encoder.vision
  patches = (vision.image_size // vision.patch_size) ** 2
  tok = vision_tokenizer.SemanticTokenizerConfig(
      feature_dim=vision.hidden_size, num_tokens=patches, **config.tokenizer.to_dict())
  pixels = pixel_decoder.PixelDecoderConfig(cond_dim=vision.hidden_size, cond_tokens=patches,
                                            **config.pixel_decoder.to_dict())
  return tok, pixels
