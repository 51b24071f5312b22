"""Decoding with a KV cache, for the decoder and the ILLUME model alike: text (greedy,
temperature, top-k, top-p, stop tokens) and images (exactly `tokens_per_image` codes from the
image vocabulary, classifier-free guidance with the prompt masked, ILLUME's way).

Prompts are batched left-padded: `prompt` [B, P] int32 with `prompt_mask` [B, P] (1 real, 0 pad;
the pads are on the left). Each row's positions count its real tokens only, and padded or masked
slots have segment id 0, so they are never attended: a masked token is as if absent. That is
also the unconditional branch of CFG: the same prompt with its condition tokens (the caption, the
edit instruction) masked equals the training sequence whose text was dropped.

    prompt, prompt_mask = left_pad([ids_1, ids_2], pad_id=0)     # numpy [B, P] each
    out = generate_text(model, params, prompt, prompt_mask, rng, SamplingConfig(
        max_new_tokens=32, temperature=0.0, stop_tokens=(vocab.eos_id,)), images=images)
    codes = generate_image(model, params, prompt, prompt_mask, rng, tokens_per_image=256,
                           image_offset=vocab.image_offset, image_codes=vocab.image_codes,
                           guidance=2.0, uncond_mask=mask_without_caption, temperature=1.0,
                           top_k=64)          # [B, 256] codebook ids

DreamLLM draws with the same prompt convention, the prompt ending with <dream_start> instead:

    images = generate_dream_image(model, params, prompt, prompt_mask, rng, guidance=7.5,
                                  uncond_mask=mask_without_caption, num_steps=50)  # uint8

Everything here is a jitted function of arrays; the model, the sampling settings and the lengths
are static.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp

from unimodal_jax.diffusion import schedules
from unimodal_jax.models.decoder import init_cache


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int = 32
  temperature: float = 1.0  # 0: greedy (argmax)
  top_k: int = 0  # 0: off
  top_p: float = 1.0  # 1.0: off
  stop_tokens: tuple = ()  # a row stops after emitting one of these
  pad_id: int = 0  # written after a row stopped
  # > 0: only ids below it (the text vocabulary) and the stop tokens can be sampled
  vocab_limit: int = 0

  def __post_init__(self):
    if self.max_new_tokens <= 0:
      raise ValueError(f"sampling.max_new_tokens must be positive, got {self.max_new_tokens}")
    if self.temperature < 0:
      raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"sampling.top_k must be >= 0, got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p}")


# ----------------------------------------------------------------------------- logits

def restrict_to_range(logits, lo: int, hi: int):
  """Logits with every id outside [lo, hi) set to -inf (e.g. the image vocabulary)."""
  ids = jnp.arange(logits.shape[-1])
  return jnp.where((ids >= lo) & (ids < hi), logits, -jnp.inf)


def guided_logits(cond, uncond, guidance: float):
  """Classifier-free guidance on logits: uncond + w (cond - uncond); w = 1 is the conditional
  model, w = 0 the unconditional one."""
  return uncond + guidance * (cond - uncond)


def filter_logits(logits, top_k: int = 0, top_p: float = 1.0):
  """Top-k, then top-p (nucleus) filtering: removed ids get -inf. The most likely id always
  stays, so a row is never empty."""
  logits = logits.astype(jnp.float32)
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Keep a sorted id while the mass before it is below top_p (so the first is always kept).
    before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = before < top_p
    threshold = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


def sample_token(logits, rng, temperature: float, top_k: int = 0, top_p: float = 1.0):
  """One id per row: argmax when temperature is 0, else a draw from the filtered softmax."""
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = filter_logits(logits.astype(jnp.float32) / temperature, top_k, top_p)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


# ----------------------------------------------------------------------------- model steps

def _positions(mask):
  """Positions counting real tokens only (pads and masked tokens do not advance them)."""
  return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)


def _apply(model, params, tokens, *, positions, segment_ids, cache, images=None,
           code_positions=None):
  kw = {"positions": positions, "segment_ids": segment_ids, "cache": cache}
  if images is not None:
    kw["images"] = images
  if code_positions is not None:
    kw["code_positions"] = code_positions
  return model.apply({"params": params}, tokens, **kw)


def prefill(model, params, prompt, prompt_mask, max_len: int, images=None):
  """Run the prompt through the model into a fresh cache of `max_len` slots: (logits of the last
  prompt slot [B, V], cache, next positions [B])."""
  mask = prompt_mask.astype(jnp.int32)
  cfg = model.config.llm if hasattr(model.config, "llm") else model.config
  cache = init_cache(cfg, prompt.shape[0], max_len)
  logits, cache = _apply(model, params, prompt, positions=_positions(mask), segment_ids=mask,
                         cache=cache, images=images)
  return logits[:, -1], cache, jnp.sum(mask, axis=1)


def decode_step(model, params, token, position, cache, code_position=None):
  """One token per row [B] at `position` [B] -> (logits [B, V], cache). `code_position` [B]: an
  image code's place in its image, for models that embed it (IllumeConfig.code_positions)."""
  ones = jnp.ones((token.shape[0], 1), jnp.int32)
  logits, cache = _apply(model, params, token[:, None], positions=position[:, None],
                         segment_ids=ones, cache=cache,
                         code_positions=None if code_position is None else code_position[:, None])
  return logits[:, 0], cache


# ----------------------------------------------------------------------------- text

@functools.partial(jax.jit, static_argnames=("model", "config"))
def generate_text(model, params, prompt, prompt_mask, rng, config: SamplingConfig, images=None):
  """[B, max_new_tokens] int32: the sampled continuation of each prompt; after a stop token a row
  writes config.pad_id. Stops early (all rows stopped) with a while loop."""
  b = prompt.shape[0]
  n = config.max_new_tokens
  logits, cache, pos = prefill(model, params, prompt, prompt_mask, prompt.shape[1] + n, images)
  stops = jnp.asarray(config.stop_tokens or (-1,), jnp.int32)
  out = jnp.full((b, n), config.pad_id, jnp.int32)

  def cond(carry):
    i, _, _, _, done, _, _ = carry
    return (i < n) & ~jnp.all(done)

  def body(carry):
    i, logits, cache, pos, done, out, rng = carry
    rng, key = jax.random.split(rng)
    if config.vocab_limit:
      ids = jnp.arange(logits.shape[-1])
      logits = jnp.where((ids < config.vocab_limit) | jnp.isin(ids, stops), logits, -jnp.inf)
    tok = sample_token(logits, key, config.temperature, config.top_k, config.top_p)
    tok = jnp.where(done, config.pad_id, tok)
    out = out.at[:, i].set(tok)
    done = done | jnp.isin(tok, stops)
    logits, cache = decode_step(model, params, tok, pos, cache)
    return i + 1, logits, cache, pos + 1, done, out, rng

  carry = (jnp.zeros((), jnp.int32), logits, cache, pos, jnp.zeros((b,), bool), out, rng)
  return jax.lax.while_loop(cond, body, carry)[5]


# ----------------------------------------------------------------------------- images

@functools.partial(jax.jit, static_argnames=("model", "tokens_per_image", "image_offset",
                                             "image_codes", "temperature", "top_k", "top_p"))
def generate_image(model, params, prompt, prompt_mask, rng, *, tokens_per_image: int,
                   image_offset: int, image_codes: int, guidance=1.0, uncond_mask=None,
                   uncond_prompt=None, temperature: float = 1.0, top_k: int = 0,
                   top_p: float = 1.0, images=None):
  """Image codes [B, tokens_per_image] in [0, image_codes) (subtract nothing: these are codebook
  indices, the vocabulary ids minus image_offset).

  The prompt must end with <image_start>. Every step's logits are restricted to the image
  vocabulary, so exactly tokens_per_image codes come out. With `uncond_mask` (the prompt mask with
  the condition's tokens zeroed) the batch runs twice, conditional and unconditional rows, and
  each step samples from guided_logits(cond, uncond, guidance). `uncond_prompt` (same shape,
  also left-padded, also ending with <image_start>) replaces the prompt's tokens in the
  unconditional rows when masking alone cannot express the unconditional input."""
  b = prompt.shape[0]
  cfg_on = uncond_mask is not None
  if cfg_on:
    prompt = jnp.concatenate([prompt, prompt if uncond_prompt is None else uncond_prompt])
    prompt_mask = jnp.concatenate([prompt_mask, uncond_mask])
    images = None if images is None else jnp.concatenate([images, images])
  logits, cache, pos = prefill(model, params, prompt, prompt_mask,
                               prompt.shape[1] + tokens_per_image, images)
  # a model that embeds each code's place in its image is told it (a decode step cannot count)
  tells_place = bool(getattr(model.config, "code_positions", 0))

  def body(carry, inputs):
    key, place = inputs
    logits, cache, pos = carry
    if cfg_on:
      logits = guided_logits(logits[:b], logits[b:], guidance)
    logits = restrict_to_range(logits.astype(jnp.float32), image_offset,
                               image_offset + image_codes)
    tok = sample_token(logits, key, temperature, top_k, top_p)
    step_tok = jnp.concatenate([tok, tok]) if cfg_on else tok
    logits, cache = decode_step(model, params, step_tok, pos, cache,
                                jnp.full_like(step_tok, place) if tells_place else None)
    return (logits, cache, pos + 1), tok

  keys = jax.random.split(rng, tokens_per_image)
  _, toks = jax.lax.scan(body, (logits, cache, pos), (keys, jnp.arange(tokens_per_image)))
  return toks.T - image_offset


@functools.partial(jax.jit, static_argnames=("model", "num_steps", "sampler"))
def generate_dream_image(model, params, prompt, prompt_mask, rng, *, guidance=7.5,
                         uncond_mask=None, uncond_prompt=None, num_steps: int = 50,
                         sampler: str = "ddim", images=None):
  """uint8 images [B, S, S, 3] drawn by a DreamLLM (models/dreamllm.py).

  The prompt must end with <dream_start> (the model emitted it, or the caller placed it). The
  model's Q query slots are appended and one causal pass over prompt and queries gives their
  states, the U-Net's condition: the LLM runs once per image, not once per denoising step. With
  `uncond_mask` (the prompt mask with the condition's tokens zeroed: the training sequence whose
  caption was dropped, data/formatting.py) the unconditional condition comes from a second pass,
  and the U-Net sampler (diffusion/schedules.sample, DDIM or Euler) applies classifier-free
  guidance; `uncond_prompt` as in generate_image."""
  cfg = model.config
  queries = jnp.full((prompt.shape[0], cfg.num_dream_queries), cfg.vocab.dream_query, jnp.int32)

  def condition(tokens, mask):
    tokens = jnp.concatenate([tokens, queries], axis=1)
    mask = jnp.concatenate([mask.astype(jnp.int32), jnp.ones_like(queries)], axis=1)
    return model.apply({"params": params}, tokens, positions=_positions(mask), segment_ids=mask,
                       images=images, method="query_condition")

  cond = condition(prompt, prompt_mask)
  uncond = None
  if uncond_mask is not None:
    uncond = condition(prompt if uncond_prompt is None else uncond_prompt, uncond_mask)
  noise = jax.random.normal(
      rng, (prompt.shape[0], cfg.latent_size, cfg.latent_size, cfg.latent_channels), jnp.float32)
  denoise = lambda x, t, c: model.apply({"params": params}, x, t, c, method="denoise")
  samples = schedules.sample(denoise, cfg.schedule.make(), noise, cond, uncond, sampler=sampler,
                             num_steps=num_steps, guidance_scale=guidance)
  return model.apply({"params": params}, samples, method="decode_dream_samples")


# ----------------------------------------------------------------------------- documents

@dataclasses.dataclass
class GeneratedDocument:
  """What generate_document returns for one prompt."""
  segments: list  # data/documents.Segment, in reading order: the prompt, text, images (PNG)
  stop: str  # why it ended: "eos", "max_new_tokens", "max_images" or "context"
  tokens: list  # the whole sequence, laid out as the formatter lays out interleaved documents
  views: list  # the images read, in order (uint8 [S, S, 3]), at the tokens' <image_patch> slots
  codes: list  # ILLUME: each placed image's codes, as written in `tokens` (DreamLLM: none)


def generate_document(model, params, formatter, draw, prompts, *, seed: int = 0,
                      max_images: int = 4, max_new_tokens: int = 128, temperature: float = 1.0,
                      top_k: int = 0, top_p: float = 1.0, round_tokens: int = 32, log=None):
  """Free-form interleaved documents (DreamLLM's interleaved generation), one per prompt.

  Text is sampled until the model emits the token that places an image (<dream_start> for a
  DreamLLM, <image_start> for ILLUME), end-of-sequence, or a limit. Where it placed one, `draw`
  (pipeline/evaluate.py's DreamDrawer or CodeDrawer) draws the image from the document so far,
  with classifier-free guidance against the empty prompt; the image is laid out as in training
  (formatter.placed_image: DreamLLM's dream block, or ILLUME's written codes, then the image
  read through the encoder), so the text after it reads it; then the text goes on. Batched:
  each round the unfinished documents write text together, then those that placed an image
  draw together. Text sampling may emit only text, end-of-sequence and the image token.

  An image beyond `max_images`, or one that no longer fits the model's context (or the
  formatter's views per sequence), ends its document there ("max_images", "context");
  `max_new_tokens` counts text tokens. Returns [GeneratedDocument]."""
  import numpy as np
  from unimodal_jax.data.documents import Document, Segment
  from unimodal_jax.data.formatting import Skip
  from unimodal_jax.data.worlds.shapes import encode_png
  v, fcfg = formatter.vocab, formatter.config
  place = v.dream_start if fcfg.dream_queries else v.image_start
  cfg = model.config.llm if hasattr(model.config, "llm") else model.config
  context, size = int(cfg.max_seq_len), int(fcfg.image_size)
  rng = jax.random.key(seed)

  class State:
    def __init__(self, prompt):
      ex = formatter(Document("prompt", "interleaved", [Segment.of_text(prompt)]))
      self.tokens = [int(t) for t in ex["inputs"]]  # BOS + prompt (the final EOS cut)
      self.views = list(ex["images"])
      self.segments, self.text, self.written, self.images = [Segment.of_text(prompt)], [], 0, 0
      self.stop, self.wants_image, self.codes = None, False, []

    def end_text(self):
      if self.text:
        self.segments.append(Segment.of_text(formatter.sp.decode(self.text)))
        self.text = []

  docs = [State(p) for p in prompts]
  text_config = SamplingConfig(max_new_tokens=round_tokens, temperature=temperature, top_k=top_k,
                               top_p=top_p, stop_tokens=(v.eos_id, place), pad_id=v.eos_id,
                               vocab_limit=v.text_size)
  for step in itertools.count():
    active = [d for d in docs if d.stop is None]
    if not active:
      break
    for i in range(0, len(active), draw.batch):  # text until an image, the end, or round_tokens
      batch = active[i:i + draw.batch]
      longest = max(len(d.tokens) for d in batch)
      tokens, mask = left_pad([d.tokens for d in batch], v.pad_id, -(-longest // 32) * 32)
      images = np.zeros((len(batch), max(1, fcfg.max_images), size, size, 3), np.uint8)
      for j, d in enumerate(batch):
        if d.views:
          images[j, :len(d.views)] = d.views
      out = np.asarray(generate_text(model, params, jnp.asarray(tokens), jnp.asarray(mask),
                                     jax.random.fold_in(rng, 2 * step), text_config,
                                     images=jnp.asarray(images)))
      for d, row in zip(batch, out.tolist()):
        cut = next((k for k, t in enumerate(row) if t in (v.eos_id, place)), None)
        new = row if cut is None else row[:cut]
        room = max(0, min(max_new_tokens - d.written, context - len(d.tokens)))
        d.tokens += new[:room]
        d.text += new[:room]
        d.written += len(new[:room])
        if len(new) > room:
          d.stop = "max_new_tokens" if d.written >= max_new_tokens else "context"
        elif cut is not None and row[cut] == v.eos_id:
          d.stop = "eos"
        elif cut is not None:
          d.wants_image = d.images < max_images
          d.stop = None if d.wants_image else "max_images"
    drawing = [d for d in docs if d.wants_image]
    if drawing:
      conds = [(d.tokens, np.asarray(d.views).reshape((-1, size, size, 3))) for d in drawing]
      empty = ([v.bos_id], np.zeros((0, size, size, 3), np.uint8))
      pixels, codes = draw.drawn(conds, [empty] * len(drawing), seed + 2 * step + 1)
      for j, d in enumerate(drawing):
        d.wants_image = False
        png = encode_png(np.asarray(pixels[j]))
        try:
          ids, read = formatter.placed_image(png, None if codes is None else codes[j])
        except Skip:
          ids, read = None, None
        if (ids is None or len(d.tokens) + len(ids) > context
            or len(d.views) + len(read) > fcfg.max_images):  # views read per sequence
          d.stop = "context"
          continue
        d.end_text()
        d.tokens += ids
        d.views += read
        d.segments.append(Segment.of_image(png))
        d.images += 1
        if codes is not None:
          d.codes.append([int(c) for c in codes[j]])
    if log:
      log(f"document round {step + 1}: {len(active)} writing, {len(drawing)} images drawn, "
          f"{sum(d.stop is not None for d in docs)}/{len(docs)} done")
  for d in docs:
    d.end_text()
  return [GeneratedDocument(d.segments, d.stop, d.tokens, d.views, d.codes) for d in docs]


def left_pad(sequences, pad_id: int = 0, length: int | None = None):
  """Python lists of ids -> (tokens [B, L], mask [B, L]) left-padded numpy arrays."""
  import numpy as np
  length = length or max(len(s) for s in sequences)
  if any(len(s) > length for s in sequences):
    raise ValueError(f"a prompt of {max(len(s) for s in sequences)} tokens exceeds length {length}")
  tokens = np.full((len(sequences), length), pad_id, np.int32)
  mask = np.zeros((len(sequences), length), np.int32)
  for i, s in enumerate(sequences):
    if len(s):
      tokens[i, length - len(s):] = s
      mask[i, length - len(s):] = 1
  return tokens, mask


__all__ = ["SamplingConfig", "restrict_to_range", "guided_logits", "filter_logits",
           "sample_token", "prefill", "decode_step", "generate_text", "generate_image",
           "generate_dream_image", "generate_document", "GeneratedDocument", "left_pad"]
