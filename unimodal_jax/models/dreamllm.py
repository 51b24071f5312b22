"""DreamLLM: one decoder that reads images as encoder features and draws them by conditioning a
diffusion U-Net on the states of learned dream queries (../shared/reference/papers.md, "DreamLLM").

    tokens --+-- text / special ids ---> llm.embed_tokens ---------------------+
             +-- <image_patch> slots <-- vision_projector(vision_encoder(img)) +--> llm --+
             +-- <dream_query> slots <-- dream_queries[k mod Q] ---------------+          |
    logits over [text | specials]  <-- llm head <--------------------------------------+
    condition [Q, cross_attention_dim] <-- condition_projector(final-norm states at the
                                           query slots) --> unet (frozen) --> diffusion loss

An image the model draws is `<dream_start>` + Q `<dream_query>` slots + `<dream_end>`: the
queries' states condition the U-Net (through a frozen VAE when `vae` is set, on pixels scaled to
[-1, 1] otherwise), and the diffusion loss back-propagates through the frozen U-Net into the
condition projector, the queries and the LLM. Only `<dream_start>` is an LM target among image
tokens (data/formatting.py): the model learns where images go. One forward pass gives both
losses; the LM head is the decoder's own (DreamLLM adds no image vocabulary).

Parameters (the names stage configs' optimizer groups match):
    llm/...                  the decoder: Vicuna-7B in the paper
    vision_encoder/...       the comprehension encoder (CLIP ViT-L/14, frozen)
    vision_projector/...     linear (with bias) from its penultimate states to the LLM's width
    dream_queries            [Q, hidden] learned queries, N(0, 0.02)
    condition_projector/...  bias-free linear, LLM width -> the U-Net's cross-attention width
    unet/...                 the diffusion U-Net (SD-2.1-base in the paper, frozen)
    vae/...                  its autoencoder (frozen; absent when the U-Net works on pixels)

The k-th `<dream_query>` slot of a row takes query k mod Q, and the j-th block of Q slots
conditions the row's j-th entry of `dream_images`, as the k-th `<image_patch>` slot takes the
k-th feature of `images` (packing keeps both in sequence order).

    model = DreamLLM(config)
    logits, sums = model.apply({'params': p}, tokens, images=..., dream_images=...,
                               dream_image_segment_ids=..., rngs={'diffusion': key})
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from unimodal_jax.data.vocab import SPECIALS, Vocab
from unimodal_jax.diffusion import schedules
from unimodal_jax.models import unet as unet_lib
from unimodal_jax.models import vae as vae_lib
from unimodal_jax.models import vit
from unimodal_jax.models.decoder import ACT_HIDDEN, Decoder
from unimodal_jax.models.decoder_config import DecoderConfig
from unimodal_jax.models.illume import check_token_merge, merge_tokens, splice_image_features
from unimodal_jax.models.model_config import ModelConfig

KIND = "dreamllm"


@dataclasses.dataclass(frozen=True)
class DreamLLMConfig(ModelConfig):
  KIND = KIND
  NESTED = {"llm": DecoderConfig, "vision": vit.VitConfig, "unet": unet_lib.UNetConfig,
            "vae": vae_lib.VAEConfig, "schedule": schedules.ScheduleConfig}
  llm: DecoderConfig  # vocab_size = text tokens + the special tokens
  vision: vit.VitConfig
  unet: unet_lib.UNetConfig
  vae: vae_lib.VAEConfig | None = None  # None: the U-Net denoises pixels in [-1, 1]
  # Without a VAE, the pixels folded into pixel_patch x pixel_patch blocks (space-to-depth: a
  # lossless "latent" of S / p px and 3 p^2 channels, which a small U-Net denoises many times
  # faster than S px on a CPU; fold_pixels).
  pixel_patch: int = 1
  num_dream_queries: int = 64
  # Which ViT hidden state the model reads: -2, the penultimate (DreamLLM's and LLaVA's choice).
  feature_layer: int = -2
  # k > 1: each k x k block of neighbouring patch features is read as one token (ILLUME's
  # token merge; the paper's DreamLLM reads every patch: 1).
  token_merge: int = 1
  dream_image_size: int = 512  # pixels of the images the model draws (SD-2.1-base: 512)
  # The U-Net's DDPM schedule (default: SD-2.1-base's).
  schedule: schedules.ScheduleConfig = schedules.ScheduleConfig()
  min_snr_gamma: float = 0.0  # > 0: min-SNR weighting of the diffusion loss; DreamLLM: off

  def __post_init__(self):
    if self.llm.vocab_size <= len(SPECIALS):
      raise ValueError(f"model.llm.vocab_size={self.llm.vocab_size} must count the text tokens "
                       f"and the {len(SPECIALS)} special tokens")
    if self.num_dream_queries <= 0:
      raise ValueError(f"model.num_dream_queries must be positive, got {self.num_dream_queries}")
    if not -self.vision.num_layers - 1 <= self.feature_layer < self.vision.num_layers + 1:
      raise ValueError(f"model.feature_layer={self.feature_layer} is not a hidden state of a "
                       f"{self.vision.num_layers}-layer ViT")
    check_token_merge(self.token_merge, self.vision)
    if self.pixel_patch < 1 or (self.vae and self.pixel_patch != 1):
      raise ValueError(f"model.pixel_patch={self.pixel_patch}: a positive fold of the pixels, "
                       "and 1 with a VAE (it makes the latents)")
    if self.dream_image_size % self.pixel_patch:
      raise ValueError(f"model.dream_image_size={self.dream_image_size} is not a multiple of "
                       f"model.pixel_patch={self.pixel_patch}")
    channels = self.latent_channels
    if self.unet.in_channels != channels or self.unet.out_channels != channels:
      raise ValueError(
          f"model.unet has {self.unet.in_channels} -> {self.unet.out_channels} channels; it "
          f"denoises {'VAE latents' if self.vae else 'RGB pixels'} of {channels} channels")
    side = self.latent_size
    if side % self.unet.downsample_factor or (
        self.vae and self.dream_image_size % self.vae.downsample_factor):
      raise ValueError(f"model.dream_image_size={self.dream_image_size} gives a {side} px U-Net "
                       f"sample; it must be a multiple of {self.unet.downsample_factor}")

  @property
  def vocab(self) -> Vocab:
    return Vocab(text_size=self.llm.vocab_size - len(SPECIALS), image_codes=0)

  @property
  def vocab_size(self) -> int:
    return self.llm.vocab_size

  @property
  def tokens_per_image(self) -> int:
    """<image_patch> slots per image read."""
    return self.vision.num_patches // self.token_merge ** 2

  @property
  def hidden_size(self) -> int:
    return self.llm.hidden_size

  @property
  def latent_size(self) -> int:
    """Height = width of what the U-Net denoises."""
    return self.dream_image_size // (self.vae.downsample_factor if self.vae else self.pixel_patch)

  @property
  def latent_channels(self) -> int:
    return self.vae.latent_channels if self.vae else 3 * self.pixel_patch ** 2

  def num_params(self) -> int:
    """The multimodal LLM's parameters: decoder, encoder, projectors, queries (the diffusion
    decoder, U-Net and VAE, is counted apart: `python -m unimodal_jax.summary` lists it)."""
    e, v, q = self.llm.hidden_size, self.vision.hidden_size, self.num_dream_queries
    return (self.llm.num_params() + self.vision.num_params() + v * self.token_merge ** 2 * e
            + e + q * e
            + e * self.unet.cross_attention_dim)

  def flops_per_token(self, seq_len: int) -> float:
    """The LLM's training FLOPs per token (the U-Net, the encoder and the VAE run once per image:
    tools/roofline.py counts the compiled program's)."""
    return self.llm.flops_per_token(seq_len)


def _dense(features, config: DecoderConfig, name, axes, use_bias):
  return nn.Dense(features, use_bias=use_bias, dtype=config.jnp_dtype,
                  param_dtype=config.jnp_param_dtype, name=name,
                  kernel_init=nn.with_logical_partitioning(
                      nn.initializers.normal(config.initializer_range), axes))


def scatter_query_states(hidden, tokens, query_id: int, num_queries: int, max_dreams: int):
  """hidden [B, T, E] -> [B, max_dreams, Q, E]: the state at the k-th `query_id` slot of each
  row goes to [k // Q, k % Q]; slots beyond max_dreams * Q are dropped, missing ones are 0."""
  b, _, e = hidden.shape
  is_query = tokens == query_id
  slot = jnp.cumsum(is_query.astype(jnp.int32), axis=1) - 1
  total = max_dreams * num_queries
  target = jnp.where(is_query, slot, total)  # `total` is out of range: dropped
  rows = jnp.broadcast_to(jnp.arange(b)[:, None], target.shape)
  out = jnp.zeros((b, total, e), hidden.dtype).at[rows, target].set(hidden, mode="drop")
  return out.reshape(b, max_dreams, num_queries, e)


def to_unit_range(images):
  """uint8 [..., H, W, 3] -> float32 in [-1, 1] (SD's Normalize(0.5, 0.5))."""
  return images.astype(jnp.float32) / 127.5 - 1.0


def fold_pixels(x, patch: int):
  """[N, S, S, C] -> [N, S/p, S/p, p*p*C] (space-to-depth; identity for p = 1)."""
  if patch == 1:
    return x
  n, h, w, c = x.shape
  x = x.reshape(n, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, h // patch, w // patch, patch * patch * c)


def unfold_pixels(x, patch: int):
  """fold_pixels' inverse."""
  if patch == 1:
    return x
  n, h, w, c = x.shape
  x = x.reshape(n, h, w, patch, patch, c // patch ** 2).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, h * patch, w * patch, c // patch ** 2)


class DreamLLM(nn.Module):
  config: DreamLLMConfig
  # Batch fields the train step passes to __call__ besides the token ids.
  BATCH_INPUTS = ("positions", "segment_ids", "images", "dream_images",
                  "dream_image_segment_ids")
  RNGS = ("diffusion",)  # the diffusion loss's noise and timesteps

  def setup(self):
    cfg = self.config
    llm = cfg.llm
    self.llm = Decoder(llm)
    self.vision_encoder = vit.VisionTransformer(cfg.vision)
    self.vision_projector = _dense(llm.hidden_size, llm, "vision_projector", (None, "embed"),
                                   use_bias=True)
    self.dream_queries = self.param(
        "dream_queries", nn.with_logical_partitioning(
            nn.initializers.normal(llm.initializer_range), (None, "embed")),
        (cfg.num_dream_queries, llm.hidden_size), llm.jnp_param_dtype)
    self.condition_projector = _dense(cfg.unet.cross_attention_dim, llm, "condition_projector",
                                      ("embed", None), use_bias=False)
    self.unet = unet_lib.UNet(cfg.unet)
    if cfg.vae is not None:
      self.vae = vae_lib.VAE(cfg.vae)

  # -- reading images
  def image_features(self, images):
    """uint8 images [..., H, W, 3] -> [..., tokens_per_image, hidden]: what the LLM reads at an
    image's <image_patch> slots (the encoder's `feature_layer` state, class token dropped,
    token_merge**2 neighbours to a slot)."""
    cfg = self.config
    lead = images.shape[:-3]
    flat = images.reshape((-1,) + images.shape[-3:])
    out = self.vision_encoder(vit.normalize(flat), return_hidden_states=cfg.feature_layer != -1)
    hidden = (out.last_hidden_state if cfg.feature_layer == -1
              else out.hidden_states[cfg.feature_layer])
    feats = self.vision_projector(merge_tokens(hidden[:, int(cfg.vision.class_token):],
                                               cfg.token_merge))
    return feats.reshape(lead + feats.shape[1:])

  def embed(self, tokens, images=None):
    """Token ids [B, T] -> input embeddings [B, T, hidden]: image features at <image_patch>
    slots (when images [B, M, H, W, 3] are given), the dream queries at <dream_query> slots."""
    cfg = self.config
    vocab = cfg.vocab
    x = self.llm.embed(tokens)
    if images is None and self.is_initializing():
      v = cfg.vision  # create the encoder's and projector's params from tokens alone
      self.image_features(jnp.zeros((1, v.image_size, v.image_size, v.num_channels), jnp.uint8))
    if images is not None:
      feats = self.image_features(images)
      x = splice_image_features(x, tokens, feats.reshape(tokens.shape[0], -1, feats.shape[-1]),
                                vocab.image_patch)
    is_query = tokens == vocab.dream_query
    k = (jnp.cumsum(is_query.astype(jnp.int32), axis=1) - 1) % cfg.num_dream_queries
    queries = jnp.take(self.dream_queries.astype(x.dtype), k, axis=0)
    x = jnp.where(is_query[..., None], queries, x)
    return nn.with_logical_constraint(x, ACT_HIDDEN)

  # -- drawing images
  def condition(self, query_states):
    """Final-norm LLM states at query slots [..., Q, hidden] -> the U-Net's condition."""
    return self.condition_projector(query_states)

  def denoise(self, sample, timesteps, condition):
    """The U-Net's prediction (of the schedule's prediction_type)."""
    return self.unet(sample, timesteps, condition)

  def encode_dream_images(self, dream_images, rng=None):
    """uint8 [N, S, S, 3] -> what the U-Net denoises: scaled VAE latents (a posterior sample
    given rng, as SD trains; the mean otherwise), or the pixels in [-1, 1]."""
    x = to_unit_range(dream_images)
    if self.config.vae is None:
      return fold_pixels(x, self.config.pixel_patch)
    mean, logvar = self.vae.encode(x)
    z = mean if rng is None else vae_lib.sample_latent(mean, logvar, rng)
    return vae_lib.scale_latents(z.astype(jnp.float32), self.config.vae)

  def decode_dream_samples(self, samples):
    """The sampler's output -> uint8 images [N, S, S, 3]."""
    if self.config.vae is not None:
      samples = self.vae.decode(vae_lib.unscale_latents(samples, self.config.vae))
    else:
      samples = unfold_pixels(samples, self.config.pixel_patch)
    return vae_lib.to_uint8(samples.astype(jnp.float32))

  def diffusion_losses(self, dream_images, condition, noise, timesteps, latent_rng=None):
    """Per-image diffusion loss [N] of drawing dream_images [N, S, S, 3] from condition
    [N, Q, cross]: noise the target at `timesteps` with `noise`, predict, mean squared error
    against the schedule's target (min-SNR weighted when configured)."""
    cfg = self.config
    schedule = cfg.schedule.make()
    x0 = self.encode_dream_images(dream_images, latent_rng)
    x0 = jax.lax.stop_gradient(x0)  # the VAE is frozen, and the target is data
    noisy = schedules.add_noise(schedule, x0, noise, timesteps)
    prediction = self.denoise(noisy, timesteps, condition)
    target = schedules.training_target(schedule, x0, noise, timesteps)
    err = jnp.square(prediction.astype(jnp.float32) - target.astype(jnp.float32))
    per_image = jnp.mean(err, axis=(1, 2, 3))
    if cfg.min_snr_gamma > 0:
      per_image = per_image * schedules.min_snr_weights(schedule, timesteps, cfg.min_snr_gamma)
    return per_image

  def __call__(self, tokens, *, images=None, positions=None, segment_ids=None, cache=None,
               return_hidden=False, dream_images=None, dream_image_segment_ids=None,
               diffusion_noise=None, diffusion_timesteps=None):
    """Logits [B, T, vocab_size]; with a cache, (logits, cache); with return_hidden, the final
    (post-norm) hidden states last. With dream_images [B, M, S, S, 3] (and their segment ids,
    0 = empty slot): (logits, sums) where sums = {'diffusion': sum of the drawn images'
    diffusion losses, 'diffusion_images': their count}, each image noised with the 'diffusion'
    rng (or the given diffusion_noise [B, M, s, s, c] and diffusion_timesteps [B, M])."""
    cfg = self.config
    x = self.embed(tokens, images)
    out = self.llm(inputs_embeds=x, positions=positions, segment_ids=segment_ids, cache=cache,
                   return_hidden=True)
    logits, hidden = out[0], out[-1]
    if self.is_initializing() and dream_images is None:
      self._init_drawing(hidden)
    if dream_images is not None:
      sums = self._diffusion_sums(hidden, tokens, dream_images, dream_image_segment_ids,
                                  diffusion_noise, diffusion_timesteps)
      return logits, sums
    result = [logits]
    if cache is not None:
      result.append(out[1])
    if return_hidden:
      result.append(hidden)
    return result[0] if len(result) == 1 else tuple(result)

  def _init_drawing(self, hidden):
    cfg = self.config
    condition = self.condition(hidden[:1, :1])
    s = cfg.latent_size
    sample = jnp.zeros((1, s, s, cfg.latent_channels), jnp.float32)
    self.denoise(sample, jnp.zeros((1,), jnp.int32), condition)
    if cfg.vae is not None:
      self.vae(jnp.zeros((1, cfg.dream_image_size, cfg.dream_image_size, 3), jnp.float32))

  def _diffusion_sums(self, hidden, tokens, dream_images, segment_ids, noise, timesteps):
    cfg = self.config
    b, m = dream_images.shape[:2]
    states = scatter_query_states(hidden, tokens, cfg.vocab.dream_query, cfg.num_dream_queries,
                                  m)
    condition = self.condition(states).reshape(b * m, cfg.num_dream_queries, -1)
    s, c = cfg.latent_size, cfg.latent_channels
    latent_rng = None
    if noise is None or timesteps is None:
      rng = self.make_rng("diffusion")
      noise_rng, t_rng, latent_rng = jax.random.split(rng, 3)
      noise = jax.random.normal(noise_rng, (b * m, s, s, c), jnp.float32)
      timesteps = jax.random.randint(t_rng, (b * m,), 0, cfg.schedule.num_train_timesteps)
    per_image = self.diffusion_losses(
        dream_images.reshape((b * m,) + dream_images.shape[2:]), condition,
        noise.reshape(b * m, s, s, c), timesteps.reshape(b * m), latent_rng)
    valid = (segment_ids.reshape(b * m) > 0) if segment_ids is not None else jnp.ones(
        (b * m,), bool)
    return {"diffusion": jnp.sum(jnp.where(valid, per_image, 0.0)),
            "diffusion_images": jnp.sum(valid.astype(jnp.float32))}

  # -- sampling helpers (sampling.generate_dream_image)
  def query_condition(self, tokens, *, positions, segment_ids, images=None):
    """The U-Net condition [B, Q, cross] of the last Q tokens of each row (the query slots after
    a prompt ending with <dream_start>): one causal pass over the prompt and the queries."""
    x = self.embed(tokens, images)
    _, hidden = self.llm(inputs_embeds=x, positions=positions, segment_ids=segment_ids,
                         return_hidden=True)
    return self.condition(hidden[:, -self.config.num_dream_queries:])


# Parameter-group patterns for optimizer.groups (regexes on 'a/b/c' param paths).
GROUP_PATTERNS = {
    "llm": r"llm/.*",
    "vision_encoder": r"vision_encoder/.*",
    "vision_projector": r"vision_projector/.*",
    "dream_queries": r"dream_queries",
    "condition_projector": r"condition_projector/.*",
    "unet": r"unet/.*",
    "vae": r"vae/.*",
}


__all__ = ["DreamLLMConfig", "DreamLLM", "scatter_query_states", "to_unit_range",
           "GROUP_PATTERNS", "KIND"]
