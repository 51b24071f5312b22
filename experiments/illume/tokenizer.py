"""ILLUME's semantic tokenizer at paper scale: the shapes of the model, for building, sharding
and compiling it (../shared/reference/papers.md: 256 tokens per image, 16,384 codes, 512 x 512
output).

  encoder     the CLIP-L/14-shaped tower of experiments/illume/illume7b.py at 224 px (16 x 16 patch
              tokens of width 1024, its penultimate layer, as the LLM reads it); convert real
              weights with tools/convert_hf.py (CLIP / SigLIP checkpoints)
  tokenizer   1024-d features -> 32-d cosine codes (16,384, EMA, dead-code restarts; ILLUME+
              uses code dim 32) -> a 6-layer transformer that reconstructs the 1024-d features
  pixels      Stable Diffusion, as ILLUME renders: an SD-2.1-shaped U-Net (models/unet.py) on
              the SD VAE's 64 x 64 x 4 latents of a 512 px image, conditioned through
              cross-attention on the 256 reconstructed 1024-d semantic features (in place of
              SD's text states; width 1024 as SD-2.1's). Start it from SD-2.1-base's weights
              (tools/convert_hf.py on the pipeline directory): the shapes are the same.

    from experiments.illume import tokenizer
    tok_cfg, unet_cfg, vae_cfg = tokenizer.model_configs(tokenizer.get_config())

The `:pixel_decoder` variant is the U-Net's fine-tuning step for tools/aot_compile.py:

    python tools/aot_compile.py --config=experiments/illume/tokenizer.py:pixel_decoder \
        --topology=v5p-256

Training at this scale needs an image stream of real photos (not built yet): the tiny
counterparts experiments/tiny/tokenizer_shapes.py and tokenizer_digits.py train the same modules
end to end on this machine.
"""
import ml_collections

from experiments.dreamllm import sd21_base
from experiments.illume import illume7b

IMAGE_SIZE = 512  # pixels out
TOKENS_PER_IMAGE = illume7b.TOKENS_PER_IMAGE  # 256 = 16 x 16
ENCODER_SIZE = 224  # 224 px / 14 px patches = 16 x 16 features
CODEBOOK_SIZE = 16_384


def get_config(arg=None):
  if arg not in (None, "", "pixel_decoder"):
    raise ValueError(f"experiments/illume/tokenizer.py: unknown variant {arg!r} (use "
                     "'pixel_decoder' or nothing)")
  # The MLLM's encoder at 224 px: 16 x 16 = 256 patch features to quantize, one per image token
  # (the MLLM reads the same tower at 448 px, its 32 x 32 patches merged 2 x 2).
  vision = dict(illume7b.get_config(1).model.vision.to_dict(), image_size=ENCODER_SIZE)
  c = ml_collections.ConfigDict()
  c.encoder = dict(vision=vision, feature_layer=-2)
  c.tokenizer = dict(codebook_size=CODEBOOK_SIZE, code_dim=32, decoder_hidden=1024,
                     decoder_layers=6, decoder_heads=16, smooth_l1_weight=1.0, cosine_weight=1.0,
                     quantizer=dict(l2_normalized=True, ema_decay=0.99,
                                    dead_code_threshold=0.05, commitment_weight=0.25))
  patches = (vision["image_size"] // vision["patch_size"]) ** 2
  c.pixel_decoder = ml_collections.ConfigDict(dict(
      sd21_base.SD21_BASE_UNET, cross_attention_dim=vision["hidden_size"],
      condition_length=patches, param_dtype="float32", dtype="bfloat16", remat_policy="full"))
  c.vae = ml_collections.ConfigDict(dict(sd21_base.SD21_BASE_VAE, sample_size=IMAGE_SIZE))
  c.schedule = ml_collections.ConfigDict(sd21_base.SD21_BASE_SCHEDULE)
  c.sample = dict(sampler="ddim", steps=50, guidance=2.0)
  if arg == "pixel_decoder":  # the U-Net's training step, as tools/aot_compile.py takes it
    c.model = c.pixel_decoder
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    c.global_batch = 256
    c.train = ml_collections.ConfigDict(dict(steps=100_000))
    c.optimizer = ml_collections.ConfigDict(dict(
        learning_rate=1e-5, warmup_steps=1000, schedule="cosine", end_lr_ratio=0.0,
        b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, clip_grad_norm=1.0))
  return c


def model_configs(config):
  """(SemanticTokenizerConfig, UNetConfig, VAEConfig) for `config` (get_config's layout)."""
  from unimodal_jax.models import unet, vae, vision_tokenizer
  vision = config.encoder.vision
  patches = (vision.image_size // vision.patch_size) ** 2
  tok = vision_tokenizer.SemanticTokenizerConfig(
      feature_dim=vision.hidden_size, num_tokens=patches, **config.tokenizer.to_dict())
  unet_cfg = unet.UNetConfig.from_dict(config.pixel_decoder.to_dict())
  vae_cfg = vae.VAEConfig.from_dict(config.vae.to_dict())
  return tok, unet_cfg, vae_cfg
