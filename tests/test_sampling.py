"""sampling.py against full recomputation: KV-cache decoding, CFG, the image-vocabulary
restriction, masked prompts, top-k/top-p filtering and stop tokens."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unimodal_jax import sampling
from unimodal_jax.models import illume, vit
from unimodal_jax.models.decoder import Decoder
from unimodal_jax.models.decoder_config import DecoderConfig

LLM = DecoderConfig(vocab_size=24, hidden_size=32, intermediate_size=64, num_layers=2,
                    num_heads=4, num_kv_heads=2, attention_impl="xla")
VISION = vit.VitConfig(image_size=8, patch_size=4, hidden_size=16, intermediate_size=32,
                       num_layers=1, num_heads=2)
ILLUME = illume.IllumeConfig(llm=LLM, vision=VISION, image_codes=12)


@pytest.fixture(scope="module")
def decoder():
  model = Decoder(LLM)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))
  return model, jax.tree.map(lambda x: x * 8.0, params["params"])  # sharper distributions


@pytest.fixture(scope="module")
def unified():
  model = illume.Illume(ILLUME)
  params = jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, 4), jnp.int32))["params"]
  return model, nn.meta.unbox(params)


def _full_logits(model, params, seq, images=None, length=40):
  """Logits of the last token of each (unpadded) sequence, by a full forward pass. The sequences
  are right-padded to one length (causal: padding after a token cannot change its logits), so
  one compiled program serves every call."""
  tokens = np.zeros((len(seq), length), np.int32)
  for i, s in enumerate(seq):
    tokens[i, :len(s)] = s
  kw = {} if images is None else {"images": images}
  logits = _forward(model, params, jnp.asarray(tokens), **kw)
  return logits[jnp.arange(len(seq)), jnp.asarray([len(s) - 1 for s in seq])]


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, tokens, images=None):
  kw = {} if images is None else {"images": images}
  return model.apply({"params": params}, tokens, **kw)


def test_greedy_text_with_cache_equals_full_recomputation(decoder):
  model, params = decoder
  prompts = [[1, 5, 7, 9, 2], [3, 4], [8, 8, 8]]  # different lengths: left padding
  tokens, mask = sampling.left_pad(prompts)
  cfg = sampling.SamplingConfig(max_new_tokens=6, temperature=0.0)
  out = np.asarray(sampling.generate_text(model, params, jnp.asarray(tokens), jnp.asarray(mask),
                                          jax.random.key(0), cfg))
  seqs = [list(p) for p in prompts]
  for step in range(6):
    nxt = np.asarray(jnp.argmax(_full_logits(model, params, seqs), -1))
    np.testing.assert_array_equal(out[:, step], nxt, err_msg=f"step {step}")
    for s, t in zip(seqs, nxt):
      s.append(int(t))


def test_masked_prompt_tokens_are_absent(decoder):
  """A token with mask 0 in the middle of a prompt changes nothing: the row equals the prompt
  without it (positions and attention both skip it); this is CFG's unconditional branch."""
  model, params = decoder
  tokens = jnp.asarray([[1, 5, 7, 9, 2]], jnp.int32)
  mask = jnp.asarray([[1, 0, 0, 1, 1]], jnp.int32)
  logits, _, pos = sampling.prefill(model, params, tokens, mask, 8)
  expect = _full_logits(model, params, [[1, 9, 2]])
  np.testing.assert_allclose(logits, expect, atol=1e-5)
  assert int(pos[0]) == 3


def test_stop_tokens_end_a_row(decoder):
  model, params = decoder
  tokens, mask = sampling.left_pad([[1, 5, 7], [3, 4, 6]])
  free = np.asarray(sampling.generate_text(
      model, params, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0),
      sampling.SamplingConfig(max_new_tokens=5, temperature=0.0)))
  stop = int(free[0, 1])  # row 0's second token becomes a stop token
  out = np.asarray(sampling.generate_text(
      model, params, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0),
      sampling.SamplingConfig(max_new_tokens=5, temperature=0.0, stop_tokens=(stop,),
                              pad_id=23)))
  first = list(out[0]).index(stop)
  assert first <= 1 and all(t == 23 for t in out[0, first + 1:])
  row1 = list(free[1])
  k = row1.index(stop) if stop in row1 else 5
  np.testing.assert_array_equal(out[1, :k + 1], free[1, :k + 1])


def test_filter_logits_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 30)).astype(np.float32) * 3
  for top_k, top_p in [(4, 1.0), (0, 0.7), (10, 0.5), (0, 0.01)]:
    got = np.asarray(sampling.filter_logits(jnp.asarray(logits), top_k, top_p))
    for row, g in zip(logits, got):
      keep = np.ones(30, bool)
      if top_k:
        keep &= row >= np.sort(row)[-top_k]
      order = np.argsort(-np.where(keep, row, -np.inf))
      p = np.exp(row[order] - row[order].max()) * keep[order]
      p /= p.sum()
      before = np.cumsum(p) - p
      nucleus = np.zeros(30, bool)
      nucleus[order[before < top_p]] = True
      np.testing.assert_array_equal(np.isfinite(g), keep & nucleus)


def test_sampling_respects_top_k_and_seed(decoder):
  model, params = decoder
  tokens, mask = sampling.left_pad([[1, 5, 7], [3, 4, 6]])
  cfg = sampling.SamplingConfig(max_new_tokens=4, temperature=1.0, top_k=1)
  greedy = sampling.SamplingConfig(max_new_tokens=4, temperature=0.0)
  args = (model, params, jnp.asarray(tokens), jnp.asarray(mask))
  np.testing.assert_array_equal(sampling.generate_text(*args, jax.random.key(3), cfg),
                                sampling.generate_text(*args, jax.random.key(0), greedy))
  hot = sampling.SamplingConfig(max_new_tokens=8, temperature=5.0)
  a = sampling.generate_text(*args, jax.random.key(1), hot)
  np.testing.assert_array_equal(a, sampling.generate_text(*args, jax.random.key(1), hot))
  assert not np.array_equal(a, sampling.generate_text(*args, jax.random.key(2), hot))


def test_guided_logits_identities():
  cond, uncond = jnp.asarray([1.0, 3.0, -2.0]), jnp.asarray([0.5, -1.0, 2.0])
  np.testing.assert_allclose(sampling.guided_logits(cond, uncond, 1.0), cond)
  np.testing.assert_allclose(sampling.guided_logits(cond, uncond, 0.0), uncond)
  np.testing.assert_allclose(sampling.guided_logits(cond, uncond, 3.0),
                             uncond + 3.0 * (cond - uncond))


def test_image_generation_cfg_and_restriction_equal_full_recomputation(unified):
  """Greedy image tokens with guidance 2.5: every step equals the argmax over image ids of the
  guided logits of two full forward passes (prompt with and without its caption)."""
  model, params = unified
  vocab = ILLUME.vocab
  images = jax.random.randint(jax.random.key(2), (2, 1, 8, 8, 3), 0, 256).astype(jnp.uint8)
  read = [vocab.image_start] + [vocab.image_patch] * ILLUME.tokens_per_image + [vocab.image_end]
  caption = [[5, 6, 7], [9, 4, 11]]
  prompts = [[vocab.bos_id] + read + c + [vocab.image_start] for c in caption]
  tokens, mask = sampling.left_pad(prompts)
  uncond = mask.copy()
  uncond[:, -4:-1] = 0  # the caption masked
  n = 5
  codes = np.asarray(sampling.generate_image(
      model, params, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0),
      tokens_per_image=n, image_offset=ILLUME.image_offset, image_codes=ILLUME.image_codes,
      guidance=2.5, uncond_mask=jnp.asarray(uncond), temperature=0.0, images=images))
  assert codes.shape == (2, n)
  cond_seq = [list(p) for p in prompts]
  uncond_seq = [[vocab.bos_id] + read + [vocab.image_start] for _ in prompts]
  for step in range(n):
    lc = _full_logits(model, params, cond_seq, images)
    lu = _full_logits(model, params, uncond_seq, images)
    guided = sampling.guided_logits(lc, lu, 2.5)[:, ILLUME.image_offset:]
    np.testing.assert_array_equal(codes[:, step], np.asarray(jnp.argmax(guided, -1)))
    for a, b, c in zip(cond_seq, uncond_seq, codes[:, step]):
      a.append(int(c) + ILLUME.image_offset)
      b.append(int(c) + ILLUME.image_offset)


def test_image_tokens_stay_in_the_image_vocabulary(unified):
  """Even when the model prefers text ids by far, the image steps emit only codes."""
  model, params = unified
  params = jax.tree.map(lambda x: x, params)  # a copy to edit
  params["vision_head"]["kernel"] = jnp.zeros_like(params["vision_head"]["kernel"])
  params["llm"]["lm_head"]["kernel"] = params["llm"]["lm_head"]["kernel"] * 100
  vocab = ILLUME.vocab
  tokens, mask = sampling.left_pad([[vocab.bos_id, 5, vocab.image_start]] * 3)
  codes = np.asarray(sampling.generate_image(
      model, params, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0),
      tokens_per_image=7, image_offset=ILLUME.image_offset, image_codes=ILLUME.image_codes,
      temperature=1.0, top_k=3))
  assert codes.shape == (3, 7)
  assert codes.min() >= 0 and codes.max() < ILLUME.image_codes


def test_bad_settings_are_named():
  with pytest.raises(ValueError, match="top_p"):
    sampling.SamplingConfig(top_p=0.0)
  with pytest.raises(ValueError, match="max_new_tokens"):
    sampling.SamplingConfig(max_new_tokens=0)
  with pytest.raises(ValueError, match="exceeds length"):
    sampling.left_pad([[1, 2, 3]], length=2)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_drawing_on_a_mesh_draws_what_one_device_draws(unified, temperature):
  """ILLUME's drawer split over a (data 2, fsdp 2, tensor 2) mesh: the params laid out by the
  rules table, each batch's rows over data x fsdp (the short last batch padded), draws the codes
  one device draws, sampled (same keys) or greedy."""
  from types import SimpleNamespace
  from unimodal_jax import sharding
  from unimodal_jax.pipeline import evaluate
  model, params = unified
  vocab = ILLUME.vocab
  formatter = SimpleNamespace(vocab=vocab, config=SimpleNamespace(image_size=8))
  codec = SimpleNamespace(tokens_per_image=6)
  rng = np.random.default_rng(0)
  conds = [([vocab.bos_id] + [int(t) for t in rng.integers(3, 20, size=1 + i % 4)], [])
           for i in range(11)]
  unconds = [([vocab.bos_id], []) for _ in conds]
  s = evaluate.ImageSampling(guidance=2.0, temperature=temperature, top_k=8)
  one = evaluate.CodeDrawer(model, params, formatter, codec, s, batch=8).codes(conds, unconds, 3)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  drawer = evaluate.CodeDrawer(model, params, formatter, codec, s, batch=8, mesh=mesh)
  split = {leaf.sharding.spec for leaf in jax.tree.leaves(drawer.params)}
  assert any("tensor" in str(spec) for spec in split)  # laid out as training lays them out
  on_mesh = drawer.codes(conds, unconds, 3)
  assert on_mesh.shape == (11, 6)
  np.testing.assert_array_equal(on_mesh, one)


def test_pixels_decoded_on_a_mesh_are_those_one_device_decodes():
  """The shipped pixel decoder on a (data 2, fsdp 2, tensor 2) mesh, the decoders replicated and
  each chunk's rows split over data x fsdp (the short last chunk padded): the images one device
  draws, with the same keys. Their noise does not depend on the padding."""
  from unimodal_jax import sharding
  from unimodal_jax.models.image_codec import ImageCodec
  codec = ImageCodec.load("experiments/tiny/pretrained/shapes")
  ids = np.random.default_rng(0).integers(0, codec.codebook_size, (11, codec.tokens_per_image))
  one = codec.detokenize(ids, jax.random.key(5), steps=3, batch=8)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  on_mesh = codec.detokenize(ids, jax.random.key(5), steps=3, batch=8, mesh=mesh)
  assert on_mesh.shape == one.shape == (11, codec.image_size, codec.image_size, 3)
  np.testing.assert_array_equal(on_mesh, one)
  assert not np.array_equal(one[0], one[1])  # different codes draw different images


def test_code_index_counts_each_code_within_its_run():
  """code_index against a Python loop: the k-th code of each run of consecutive codes is k,
  every other token 0 (runs split by any text or special token)."""
  rng = np.random.default_rng(0)
  offset = 10
  tokens = rng.integers(0, 16, size=(4, 40))
  tokens[:, 5:20] = rng.integers(offset, 16, size=(4, 15))  # one long run per row
  expected = np.zeros_like(tokens)
  for b in range(tokens.shape[0]):
    run = 0
    for t, tok in enumerate(tokens[b]):
      run = run + 1 if tok >= offset else 0
      expected[b, t] = run - 1 if tok >= offset else 0
  np.testing.assert_array_equal(np.asarray(illume.code_index(jnp.asarray(tokens), offset)),
                                expected)


def test_image_generation_tells_the_model_each_codes_place():
  """A model that embeds each code's place in its image (code_positions): greedy drawing with
  the KV cache equals the argmax of full forward passes, which count the places from the tokens;
  the place embedding is large enough here that ignoring it draws other codes."""
  n = 6
  config = illume.IllumeConfig(llm=LLM, vision=VISION, image_codes=12, code_positions=n)
  model = illume.Illume(config)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(3), jnp.zeros((1, 4), jnp.int32))[
      "params"])
  params["code_position_embed"]["embedding"] = params["code_position_embed"]["embedding"] * 300
  vocab = config.vocab
  prompts = [[vocab.bos_id, 5, 6, vocab.image_start], [vocab.bos_id, 9, 4, 11, vocab.image_start]]
  tokens, mask = sampling.left_pad(prompts)
  draw = lambda p: np.asarray(sampling.generate_image(
      model, p, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0), tokens_per_image=n,
      image_offset=config.image_offset, image_codes=config.image_codes, temperature=0.0))
  codes = draw(params)
  seqs = [list(p) for p in prompts]
  for step in range(n):
    full = _full_logits(model, params, seqs)[:, config.image_offset:]
    np.testing.assert_array_equal(codes[:, step], np.asarray(jnp.argmax(full, -1)))
    for s, c in zip(seqs, codes[:, step]):
      s.append(int(c) + config.image_offset)
  unplaced = dict(params, code_position_embed={"embedding": jnp.zeros((n, LLM.hidden_size))})
  assert not np.array_equal(draw(unplaced), codes)
