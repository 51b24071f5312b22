"""ILLUME's unified MLLM: one LLaMA-family decoder that reads images as continuous features and
writes them as discrete tokens (../shared/reference/papers.md, "ILLUME: Architecture").

    tokens  --+-- text / special ids --> llm.embed_tokens ----------------+
              +-- image-code ids -----> vision_embed (own rows) ---------+--> llm layers --+
              +-- <image_patch> slots <- adapter(vision_encoder(images)) +                 |
    logits = [llm's text head | vision_head (own rows)] over the unified vocabulary  <-----+

Parameters (the names optimizer groups match, ILLUME Table 5):
    llm/...              the decoder (text embedding, layers, text head): Vicuna-7B in the paper
    vision_encoder/...   the ViT whose patch features the model reads (UNIT/CLIP-like)
    adapter/...          MLP from the encoder's width to the LLM's ("vision adapter")
    vision_embed/...     embedding rows of the image codes  } "vision embed & head"
    vision_head/...      head rows of the image codes       }
    code_position_embed/ each code's place in its image     }  (only with code_positions > 0)

The unified vocabulary is data/vocab.py's: [text | 4 specials | image codes]; `llm.vocab_size`
counts text + specials, `image_codes` the rest. The k-th <image_patch> token of a row takes the
k-th patch feature of that row's images in order (the packing keeps images in sequence order), so
every view read is `tokens_per_image` consecutive slots; a high-resolution image is several views
(a global view and its slices, data/slicing.py) between <image_start> and <image_end>.

    model = Illume(config)
    params = model.init(rng, tokens)['params']                         # initializes every part
    logits = model.apply({'params': params}, tokens, images=images)    # [B, T, vocab.size]
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from unimodal_jax.data.vocab import SPECIALS, Vocab
from unimodal_jax.models import vit
from unimodal_jax.models.decoder import ACT_HIDDEN, ACT_VOCAB, Decoder
from unimodal_jax.models.decoder_config import DecoderConfig
from unimodal_jax.models.linear import Linear
from unimodal_jax.models.model_config import ModelConfig

KIND = "illume"


@dataclasses.dataclass(frozen=True)
class IllumeConfig(ModelConfig):
  KIND = KIND
  NESTED = {"llm": DecoderConfig, "vision": vit.VitConfig}
  llm: DecoderConfig  # vocab_size = text tokens + the special tokens (no image codes)
  vision: vit.VitConfig
  image_codes: int  # the vision tokenizer's codebook size (ILLUME: 16,384)
  adapter_hidden: int = 0  # 0: the LLM's width
  # Which ViT hidden state the model reads: -1 the last (what the semantic tokenizer quantizes),
  # -2 the penultimate (LLaVA's choice).
  feature_layer: int = -1
  # k > 1: each k x k block of neighbouring patch features is concatenated into one token before
  # the adapter (space-to-depth, InternVL's pixel shuffle), so a view takes num_patches / k**2
  # slots: ILLUME's 256 tokens per 448 px slice from a 14 px-patch encoder's 32 x 32 grid.
  token_merge: int = 1
  # n > 0: each written image code's input embedding also gets a learned embedding of its place
  # in the image (its index among the n codes), so the model knows which grid cell it writes
  # next. ILLUME has none (0); a tiny LLM cannot recover a code's row and column from 1-D RoPE
  # alone (with them the shapes world's drawings score higher; docs/results.md, 2026-11-29).
  code_positions: int = 0

  def __post_init__(self):
    if self.code_positions < 0:
      raise ValueError(f"model.code_positions={self.code_positions} must be >= 0 (0: off)")
    if self.image_codes <= 0:
      raise ValueError(f"model.image_codes must be positive, got {self.image_codes}")
    if self.llm.vocab_size <= len(SPECIALS):
      raise ValueError(f"model.llm.vocab_size={self.llm.vocab_size} must count the text tokens "
                       f"and the {len(SPECIALS)} special tokens")
    if not -self.vision.num_layers - 1 <= self.feature_layer < self.vision.num_layers + 1:
      raise ValueError(f"model.feature_layer={self.feature_layer} is not a hidden state of a "
                       f"{self.vision.num_layers}-layer ViT")
    check_token_merge(self.token_merge, self.vision)

  @property
  def vocab(self) -> Vocab:
    return Vocab(text_size=self.llm.vocab_size - len(SPECIALS), image_codes=self.image_codes)

  @property
  def vocab_size(self) -> int:
    return self.llm.vocab_size + self.image_codes

  @property
  def image_offset(self) -> int:
    return self.llm.vocab_size

  @property
  def tokens_per_image(self) -> int:
    """<image_patch> slots per view read."""
    return self.vision.num_patches // self.token_merge ** 2

  @property
  def hidden_size(self) -> int:
    return self.llm.hidden_size

  def num_params(self) -> int:
    e, v = self.llm.hidden_size, self.vision.hidden_size
    a = self.adapter_hidden or e
    adapter = v * self.token_merge ** 2 * a + a + a * e + e
    return (self.llm.num_params() + self.vision.num_params() + adapter
            + (2 * self.image_codes + self.code_positions) * e)

  def flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per sequence token: the LLM's with the image-code head added (the ViT and
    the adapter run once per image, a small share at tokens_per_image slots per image)."""
    return (self.llm.flops_per_token(seq_len)
            + 6 * self.llm.hidden_size * self.image_codes)


class VisionAdapter(nn.Module):
  """Two-layer GELU MLP, encoder width -> LLM width (LLaVA-1.5's projector shape)."""
  config: IllumeConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    llm = cfg.llm
    dense = lambda n, name, axes: nn.Dense(
        n, dtype=llm.jnp_dtype, param_dtype=llm.jnp_param_dtype, name=name,
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(llm.initializer_range),
                                                 axes))
    x = dense(cfg.adapter_hidden or llm.hidden_size, "fc1", (None, "mlp"))(x)
    x = nn.gelu(x, approximate=False)
    return dense(llm.hidden_size, "fc2", ("mlp", "embed"))(x)


def check_token_merge(k: int, vision: vit.VitConfig):
  """Refuses a merge that does not tile the encoder's patch grid (ILLUME's and DreamLLM's)."""
  if k < 1 or vision.grid_size % k:
    raise ValueError(f"model.token_merge={k} must be a positive divisor of the encoder's "
                     f"{vision.grid_size} x {vision.grid_size} patch grid")


def merge_tokens(patches, k: int):
  """[N, g*g, C] row-major patch features -> [N, (g/k)**2, k*k*C]: each k x k block of
  neighbours concatenated (row-major within the block) into one token; k=1 is the identity."""
  if k == 1:
    return patches
  n, p, c = patches.shape
  g = int(round(p ** 0.5))
  x = patches.reshape(n, g // k, k, g // k, k, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, (g // k) ** 2, k * k * c)


def code_index(tokens, image_offset: int):
  """[B, T] -> each image code's index within its run of consecutive codes (0 for other
  tokens): where in its image a written code sits."""
  is_code = tokens >= image_offset
  count = jnp.cumsum(is_code.astype(jnp.int32), axis=1)
  # count is non-decreasing, so the running max of its value at non-code tokens is the count
  # where the current run began
  run_start = jax.lax.cummax(jnp.where(is_code, 0, count), axis=1)
  return jnp.where(is_code, count - run_start - 1, 0)


def splice_image_features(x, tokens, features, image_patch_id: int):
  """x [B, T, E] with the k-th `image_patch_id` slot of each row replaced by features[b, k]
  (features [B, N, E]: a row's images' patch features in order). Slots beyond N keep x."""
  is_patch = tokens == image_patch_id
  slot = jnp.cumsum(is_patch.astype(jnp.int32), axis=1) - 1
  n = features.shape[1]
  gathered = jnp.take_along_axis(features, jnp.clip(slot, 0, n - 1)[..., None], axis=1)
  use = is_patch & (slot < n)
  return jnp.where(use[..., None], gathered.astype(x.dtype), x)


class Illume(nn.Module):
  config: IllumeConfig
  # Batch fields the train step passes to __call__ besides the token ids.
  BATCH_INPUTS = ("positions", "segment_ids", "images")

  def setup(self):
    cfg = self.config
    llm = cfg.llm
    self.llm = Decoder(llm)
    self.vision_encoder = vit.VisionTransformer(cfg.vision)
    self.adapter = VisionAdapter(cfg)
    self.vision_embed = nn.Embed(
        cfg.image_codes, llm.hidden_size, dtype=llm.jnp_dtype, param_dtype=llm.jnp_param_dtype,
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(llm.initializer_range), ("vocab", "embed")))
    self.vision_head = Linear(
        cfg.image_codes, dtype=llm.jnp_dtype, param_dtype=llm.jnp_param_dtype,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.normal(llm.initializer_range), ("embed", "vocab")))
    if cfg.code_positions:
      self.code_position_embed = nn.Embed(
          cfg.code_positions, llm.hidden_size, dtype=llm.jnp_dtype,
          param_dtype=llm.jnp_param_dtype, embedding_init=nn.with_logical_partitioning(
              nn.initializers.normal(llm.initializer_range), (None, "embed")))

  def image_features(self, images):
    """uint8 images [..., H, W, 3] -> adapter outputs [..., tokens_per_image, hidden]: what the
    LLM reads at an image's <image_patch> slots."""
    cfg = self.config
    lead = images.shape[:-3]
    flat = images.reshape((-1,) + images.shape[-3:])
    out = self.vision_encoder(vit.normalize(flat), return_hidden_states=cfg.feature_layer != -1)
    patches = merge_tokens(out.layer(cfg.feature_layer)[:, int(cfg.vision.class_token):],
                           cfg.token_merge)
    feats = self.adapter(patches)
    return feats.reshape(lead + feats.shape[1:])

  def embed(self, tokens, images=None, code_positions=None):
    """Token ids [B, T] (unified vocabulary) -> input embeddings [B, T, hidden], image features
    spliced in at the <image_patch> slots when images [B, M, H, W, 3] are given.

    With config.code_positions, image codes also get their place in the image: code_index(tokens)
    unless `code_positions` [B, T] gives it (one-token decode steps, which cannot count)."""
    cfg = self.config
    offset = cfg.image_offset
    text = self.llm.embed(jnp.clip(tokens, 0, offset - 1))
    codes = self.vision_embed(jnp.clip(tokens - offset, 0, cfg.image_codes - 1))
    if cfg.code_positions:
      where = code_index(tokens, offset) if code_positions is None else code_positions
      codes = codes + self.code_position_embed(where % cfg.code_positions)
    x = jnp.where((tokens >= offset)[..., None], codes.astype(text.dtype), text)
    if images is None and self.is_initializing():
      # Create the encoder's and adapter's params even when init sees tokens only.
      v = cfg.vision
      self.image_features(jnp.zeros((1, v.image_size, v.image_size, v.num_channels), jnp.uint8))
    if images is not None:
      b = tokens.shape[0]
      feats = self.image_features(images)  # [B, M, P, E]
      feats = feats.reshape(b, -1, feats.shape[-1])
      x = splice_image_features(x, tokens, feats, cfg.vocab.image_patch)
    return nn.with_logical_constraint(x, ACT_HIDDEN)

  def logits(self, hidden, text_logits):
    image_logits = self.vision_head(hidden).astype(text_logits.dtype)
    out = jnp.concatenate([text_logits, image_logits], axis=-1)
    return nn.with_logical_constraint(out, ACT_VOCAB)

  def __call__(self, tokens, *, images=None, positions=None, segment_ids=None, cache=None,
               return_hidden=False, code_positions=None):
    """Logits [B, T, vocab_size] over the unified vocabulary; with a cache, (logits, cache);
    with return_hidden, the final hidden states last (as Decoder). `code_positions`: see embed."""
    x = self.embed(tokens, images, code_positions)
    out = self.llm(inputs_embeds=x, positions=positions, segment_ids=segment_ids, cache=cache,
                   return_hidden=True)
    text_logits, hidden = out[0], out[-1]
    result = [self.logits(hidden, text_logits)]
    if cache is not None:
      result.append(out[1])
    if return_hidden:
      result.append(hidden)
    return result[0] if len(result) == 1 else tuple(result)


# Parameter-group patterns for optimizer.groups (regexes on 'a/b/c' param paths).
GROUP_PATTERNS = {
    "vision_encoder": r"vision_encoder/.*",
    "adapter": r"adapter/.*",
    "vision_embed_head": r"(vision_embed|vision_head|code_position_embed)/.*",
    "llm": r"llm/.*",
}


__all__ = ["IllumeConfig", "Illume", "VisionAdapter", "check_token_merge", "merge_tokens", "code_index", "splice_image_features", "GROUP_PATTERNS",
           "KIND"]
