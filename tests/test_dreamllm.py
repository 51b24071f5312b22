"""DreamLLM (models/dreamllm.py): the token layout of a drawn image, where the diffusion loss's
gradient goes, causality of the query states, the unconditional branch of guidance, packing, and
the sampler."""
import io

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from unimodal_jax import sampling
from unimodal_jax.data import documents as D
from unimodal_jax.data import formatting
from unimodal_jax.data import images as image_lib
from unimodal_jax.data.vocab import SPECIALS, Vocab
from unimodal_jax.models import dreamllm, unet, vit
from unimodal_jax.models.decoder_config import DecoderConfig
from unimodal_jax.train import losses, optimizer, step

TEXT = 20
QUERIES = 4
VOCAB = Vocab(text_size=TEXT)
CONFIG = dreamllm.DreamLLMConfig(
    llm=DecoderConfig(vocab_size=TEXT + len(SPECIALS), hidden_size=32, intermediate_size=64,
                      num_layers=2, num_heads=4, num_kv_heads=2, attention_impl="xla"),
    vision=vit.VitConfig(image_size=16, patch_size=4, hidden_size=16, intermediate_size=32,
                         num_layers=2, num_heads=2),
    # One level: the smallest U-Net with cross-attention (it compiles in seconds).
    unet=unet.UNetConfig(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16,),
                         down_block_types=("CrossAttnDownBlock2D",),
                         up_block_types=("CrossAttnUpBlock2D",), layers_per_block=1,
                         num_attention_heads=(2,), cross_attention_dim=24, norm_num_groups=8,
                         condition_length=QUERIES),
    num_dream_queries=QUERIES, dream_image_size=8)
MODEL = dreamllm.DreamLLM(CONFIG)
FORMAT = formatting.FormatConfig(max_length=64, image_size=16, tokens_per_image=16, max_images=2,
                                 text_dropout=0.0, dream_queries=QUERIES, dream_image_size=8,
                                 max_dream_images=2)


@pytest.fixture(scope="module")
def params():
  return nn.meta.unbox(jax.jit(MODEL.init)(jax.random.key(0),
                                           jnp.zeros((1, 8), jnp.int32))["params"])


class _Words:
  """A stand-in text tokenizer: one id per word (5 + its length)."""

  def encode(self, text):
    return [5 + len(w) for w in text.split()]


def _png(seed, size=16):
  rng = np.random.default_rng(seed)
  out = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(out, "PNG")
  return out.getvalue()


def _format(doc, fmt=FORMAT):
  return formatting.Formatter(_Words(), VOCAB, fmt)(doc)


def test_config_refuses_what_cannot_work():
  with pytest.raises(ValueError, match="RGB pixels of 3 channels"):
    CONFIG.replace(unet=CONFIG.unet.replace(in_channels=4, out_channels=4))
  with pytest.raises(ValueError, match="num_dream_queries"):
    CONFIG.replace(num_dream_queries=0)
  with pytest.raises(ValueError, match="dream_image_size=7"):
    CONFIG.replace(dream_image_size=7, unet=CONFIG.unet.replace(
        block_out_channels=(16, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), num_attention_heads=(2, 2)))
  again = dreamllm.DreamLLMConfig.from_dict(CONFIG.to_dict())
  assert again == CONFIG and again.schedule.prediction_type == "epsilon"
  with pytest.raises(ValueError, match="model.pixel_patch=3"):
    CONFIG.replace(pixel_patch=3)  # 8 px do not fold into 3 x 3 blocks


def test_token_merge_reads_each_block_of_neighbours_in_one_slot():
  """token_merge=2: the 4 x 4 patch grid is read in 4 slots, each the projection of a 2 x 2
  block's features concatenated; the parameter count follows the wider projector."""
  with pytest.raises(ValueError, match="token_merge=3"):
    CONFIG.replace(token_merge=3)
  merged = CONFIG.replace(token_merge=2)
  assert merged.tokens_per_image == 4
  model = dreamllm.DreamLLM(merged)
  p = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  assert sum(x.size for x in jax.tree.leaves(p)) - sum(
      x.size for x in jax.tree.leaves(p["unet"])) == merged.num_params()
  image = np.random.default_rng(0).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
  feats = np.asarray(model.apply({"params": p}, image, method=dreamllm.DreamLLM.image_features))
  hidden = model.apply({"params": p}, image, method=lambda m, x: m.vision_encoder(
      vit.normalize(x), return_hidden_states=True).hidden_states[merged.feature_layer])
  grid = np.asarray(hidden)[0, int(merged.vision.class_token):].reshape(4, 4, -1)
  block = np.concatenate([grid[2, 0], grid[2, 1], grid[3, 0], grid[3, 1]])  # slot 2: rows 2-3
  kernel, bias = p["vision_projector"]["kernel"], p["vision_projector"]["bias"]
  np.testing.assert_allclose(feats[0, 2], block @ np.asarray(kernel) + np.asarray(bias),
                             rtol=1e-5, atol=1e-5)


def test_folded_pixels_are_a_lossless_latent_of_the_drawn_images():
  """pixel_patch=2: the U-Net denoises 4 x 4 x 12 blocks of the 8 px images; the fold keeps each
  block's pixels together and decoding unfolds exactly."""
  folded = CONFIG.replace(pixel_patch=2, unet=CONFIG.unet.replace(
      sample_size=4, in_channels=12, out_channels=12))
  assert (folded.latent_size, folded.latent_channels) == (4, 12)
  images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
  x = dreamllm.fold_pixels(dreamllm.to_unit_range(jnp.asarray(images)), folded.pixel_patch)
  assert x.shape == (3, 4, 4, 12)
  # The block at (1, 2) holds pixels [2:4, 4:6] in row-major order.
  block = np.asarray(x[0, 1, 2]).reshape(2, 2, 3)
  np.testing.assert_allclose(block, images[0, 2:4, 4:6] / 127.5 - 1.0, atol=1e-6)
  back = np.asarray(dreamllm.unfold_pixels(x, folded.pixel_patch))
  np.testing.assert_allclose(back, images / 127.5 - 1.0, atol=1e-6)


def test_layout_only_dream_start_is_an_image_related_target():
  """text_to_image: BOS caption <dream_start>* Q x <dream_query> <dream_end> EOS*; interleaved:
  each image drawn, then read, text after it a target (DreamLLM's layout)."""
  v = VOCAB
  t2i = _format(D.Document("a", "text_to_image", [D.Segment.of_text("a red box"),
                                                   D.Segment.of_image(_png(0))]))
  sequence = list(t2i["inputs"]) + [int(t2i["targets"][-1])]
  assert sequence == [v.bos_id, 6, 8, 8, v.dream_start] + [v.dream_query] * QUERIES + [
      v.dream_end, v.eos_id]
  targets = [int(t) for t, m in zip(t2i["targets"], t2i["target_mask"]) if m]
  assert targets == [v.dream_start, v.eos_id]
  assert t2i["dream_images"].shape == (1, 8, 8, 3) and t2i["images"].shape == (0, 16, 16, 3)

  doc = D.Document("b", "interleaved", [D.Segment.of_text("one"), D.Segment.of_image(_png(1)),
                                        D.Segment.of_text("two words")])
  ex = _format(doc)
  block = [v.dream_start] + [v.dream_query] * QUERIES + [v.dream_end, v.image_start] + [
      v.image_patch] * 16 + [v.image_end]
  assert list(ex["inputs"]) + [int(ex["targets"][-1])] == (
      [v.bos_id, 8] + block + [8, 10, v.eos_id])
  special = set(range(TEXT, TEXT + len(SPECIALS)))
  image_targets = {int(t) for t, m in zip(ex["targets"], ex["target_mask"]) if m and t in special}
  assert image_targets == {v.dream_start}
  assert ex["images"].shape == (1, 16, 16, 3) and ex["dream_images"].shape == (1, 8, 8, 3)
  # The image drawn and the image read are the same picture, each at its own size.
  np.testing.assert_array_equal(ex["dream_images"][0], image_lib.decode_resize(_png(1), 8, "b"))
  np.testing.assert_array_equal(ex["images"][0], image_lib.decode_resize(_png(1), 16, "b"))


def test_layout_refuses_what_it_cannot_draw():
  tokens_only = D.Document("c", "text_to_image", [D.Segment.of_text("x"),
                                                   D.Segment.of_image_tokens([1, 2])])
  with pytest.raises(formatting.Skip, match="DreamLLM draws pixels"):
    _format(tokens_only)
  three = D.Document("d", "interleaved", [D.Segment.of_image(_png(i)) for i in range(3)])
  with pytest.raises(formatting.Skip, match="more than 2 images to draw"):
    _format(three)


def _batch(examples, rows=1, length=64, dreams=2):
  """Pack examples into `rows` rows (example i into row i % rows) as the pipeline does."""
  out = {k: np.zeros((rows, length), np.int32) for k in
         ("inputs", "targets", "target_modality", "segment_ids", "positions")}
  out["target_mask"] = np.zeros((rows, length), np.float32)
  out["images"] = np.zeros((rows, 2, 16, 16, 3), np.uint8)
  out["dream_images"] = np.zeros((rows, dreams, 8, 8, 3), np.uint8)
  out["dream_image_segment_ids"] = np.zeros((rows, dreams), np.int32)
  fill = [0] * rows
  nimg, ndream, seg = [0] * rows, [0] * rows, [0] * rows
  for i, ex in enumerate(examples):
    r = i % rows
    n = len(ex["inputs"])
    s = slice(fill[r], fill[r] + n)
    seg[r] += 1
    for k in ("inputs", "targets", "target_mask", "target_modality"):
      out[k][r, s] = ex[k]
    out["segment_ids"][r, s] = seg[r]
    out["positions"][r, s] = np.arange(n)
    for im in ex["images"]:
      out["images"][r, nimg[r]] = im
      nimg[r] += 1
    for im in ex["dream_images"]:
      out["dream_images"][r, ndream[r]] = im
      out["dream_image_segment_ids"][r, ndream[r]] = seg[r]
      ndream[r] += 1
    fill[r] += n
  return {k: jnp.asarray(v) for k, v in out.items()}


def _docs():
  a = D.Document("a", "text_to_image", [D.Segment.of_text("a red box"),
                                         D.Segment.of_image(_png(3))])
  b = D.Document("b", "interleaved", [D.Segment.of_text("one"), D.Segment.of_image(_png(4)),
                                       D.Segment.of_text("two words")])
  return _format(a), _format(b)


def _fixed_noise(rows, dreams, seed):
  noise = jax.random.normal(jax.random.key(seed), (rows, dreams, 8, 8, 3))
  t = jax.random.randint(jax.random.key(seed + 1), (rows, dreams), 0, 1000)
  return noise, t


@jax.jit
def _sums(params, batch, noise, t):
  logits, extra = MODEL.apply({"params": params}, batch["inputs"], images=batch["images"],
                              positions=batch["positions"], segment_ids=batch["segment_ids"],
                              dream_images=batch["dream_images"],
                              dream_image_segment_ids=batch["dream_image_segment_ids"],
                              diffusion_noise=noise, diffusion_timesteps=t)
  return {**losses.loss_sums(logits, batch), **extra}


def test_packing_two_documents_changes_neither_documents_losses(params):
  """Each document alone (one row, one drawn image) against both packed into one row: the LM
  sums add up and each drawn image's diffusion loss is the same (same noise and timestep)."""
  ex_a, ex_b = _docs()
  noise, t = _fixed_noise(1, 2, 7)
  alone_a = _sums(params, _batch([ex_a], dreams=2),
                  noise, t)  # the image in slot 0: noise[0, 0], t[0, 0]
  alone_b = _sums(params, _batch([ex_b], dreams=2), noise, t)
  # Packed: a's image in slot 0, b's in slot 1 -> give b's the noise it had alone in slot 0.
  packed_noise = noise.at[0, 1].set(noise[0, 0])
  packed_t = t.at[0, 1].set(t[0, 0])
  packed = _sums(params, _batch([ex_a, ex_b], dreams=2), packed_noise, packed_t)
  for key in ("weight", "ce", "correct", "diffusion_images"):
    np.testing.assert_allclose(packed[key], alone_a[key] + alone_b[key], rtol=2e-5, atol=1e-5)
  np.testing.assert_allclose(packed["diffusion"], alone_a["diffusion"] + alone_b["diffusion"],
                             rtol=2e-5)
  assert float(alone_a["diffusion_images"]) == 1.0


def test_query_states_read_the_text_before_and_not_after(params):
  v = VOCAB
  block = [v.dream_start] + [v.dream_query] * QUERIES + [v.dream_end]

  def condition(before, after):
    tokens = jnp.asarray([[v.bos_id] + before + block + after])
    positions = jnp.arange(tokens.shape[1])[None]
    hidden = MODEL.apply({"params": params}, tokens, positions=positions,
                         segment_ids=jnp.ones_like(tokens), return_hidden=True)[1]
    states = dreamllm.scatter_query_states(hidden, tokens, v.dream_query, QUERIES, 1)
    return np.asarray(states[0, 0])

  base = condition([6, 7], [8, 9])
  np.testing.assert_array_equal(base, condition([6, 7], [11, 12]))  # text after: no change
  assert np.abs(base - condition([6, 10], [8, 9])).max() > 1e-4  # text before: changes
  # The same states come out of query_condition, the sampler's one pass.
  prompt = jnp.asarray([[v.bos_id, 6, 7, v.dream_start] + [v.dream_query] * QUERIES])
  cond = MODEL.apply({"params": params}, prompt, positions=jnp.arange(prompt.shape[1])[None],
                     segment_ids=jnp.ones_like(prompt), method="query_condition")
  want = MODEL.apply({"params": params}, jnp.asarray(base), method="condition")
  np.testing.assert_allclose(cond[0], want, rtol=1e-5, atol=1e-6)


def _groups():
  return {"llm": {"pattern": "llm/.*", "learning_rate": 1e-3},
          "vision_projector": {"pattern": "vision_projector/.*", "learning_rate": 1e-3},
          "dream_queries": {"pattern": "dream_queries", "learning_rate": 1e-3},
          "condition_projector": {"pattern": "condition_projector/.*", "learning_rate": 1e-3},
          "vision_encoder": {"pattern": "vision_encoder/.*", "frozen": True},
          "unet": {"pattern": "unet/.*", "frozen": True}}


def test_stage_two_diffusion_gradient_reaches_the_llm_not_the_frozen_unet(params):
  """Stage II's groups: with the LM weight 0, the diffusion loss alone moves the queries, the
  condition projector and the LLM; the frozen U-Net and encoder get a zero gradient and no
  optimizer state, so no update. (The train step itself: tests/test_dreamllm_training.py.)"""
  ex_a, ex_b = _docs()
  batch = _batch([ex_a, ex_b], rows=2, dreams=1)
  opt = {"learning_rate": 1e-3, "schedule": "constant", "warmup_steps": 0, "groups": _groups()}
  tx, _ = optimizer.build(opt, params, 10)
  frozen = optimizer.frozen_mask(params, optimizer.parse_groups(opt["groups"]))
  opt_state = tx.init(params)
  opt_leaves = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(opt_state)}
  assert not any("unet" in p or "vision_encoder" in p for p in opt_leaves)
  assert any("dream_queries" in p for p in opt_leaves)

  def objective(p):
    p = jax.tree.map(lambda x, f: jax.lax.stop_gradient(x) if f else x, p, frozen)
    sums = step.loss_sums(MODEL, p, batch, jax.random.key(3))
    return losses.objective(sums, sums["weight"], lm_weight=0.0, diffusion_weight=1.0), sums

  (loss, sums), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(params)
  norm = lambda tree: float(optax.tree.norm(tree))
  for name in ("dream_queries", "condition_projector", "llm"):
    assert norm(grads[name]) > 0, name
  assert norm(grads["unet"]) == 0 and norm(grads["vision_encoder"]) == 0
  assert norm(grads["vision_projector"]) == 0  # with the LM weight 0 nothing reads it
  summary = losses.summarize(sums, lm_weight=0.0, diffusion_weight=1.0)
  assert float(summary["drawn_images"]) == 2
  np.testing.assert_allclose(summary["loss"], loss, rtol=1e-6)
  updates, _ = tx.update(grads, opt_state, params)
  assert norm(updates["unet"]) == 0 and norm(updates["dream_queries"]) > 0


def test_the_unconditional_branch_is_the_prompt_with_its_caption_masked(params):
  """CFG's null condition: the prompt with the caption masked equals the training sequence whose
  caption was dropped (BOS <dream_start> queries); guidance 1 is the conditional model alone."""
  v = VOCAB
  prompt, mask = sampling.left_pad([[v.bos_id, 6, 8, v.dream_start], [v.bos_id, 7, v.dream_start]])
  uncond_mask = mask.copy()
  uncond_mask[:, :] = 0
  uncond_mask[prompt == v.bos_id] = 1
  uncond_mask[prompt == v.dream_start] = 1

  def cond_of(tokens, m):
    tokens = np.concatenate([tokens, np.full((len(tokens), QUERIES), v.dream_query)], 1)
    m = np.concatenate([m, np.ones((len(m), QUERIES), np.int32)], 1)
    return MODEL.apply({"params": params}, jnp.asarray(tokens),
                       positions=jnp.asarray(np.maximum(np.cumsum(m, 1) - 1, 0)),
                       segment_ids=jnp.asarray(m), method="query_condition")

  masked = cond_of(prompt, uncond_mask)
  dropped = cond_of(np.asarray([[v.bos_id, v.dream_start]] * 2), np.ones((2, 2), np.int32))
  np.testing.assert_allclose(masked, dropped, rtol=1e-5, atol=1e-6)

  # Drawing: guidance 0 is the unconditional model alone, which is the model drawing from the
  # masked prompt; guidance 1 from the full prompt draws something else (one compile for all).
  key = jax.random.key(5)
  draw = lambda m, w: np.asarray(sampling.generate_dream_image(
      MODEL, params, jnp.asarray(prompt), jnp.asarray(m), key, guidance=w,
      uncond_mask=jnp.asarray(uncond_mask), num_steps=4)).astype(int)
  unconditional, from_masked, conditional = draw(mask, 0.0), draw(uncond_mask, 1.0), draw(mask, 1.0)
  assert unconditional.shape == (2, 8, 8, 3)
  assert np.abs(unconditional - from_masked).max() <= 1
  assert np.abs(unconditional - conditional).max() > 1
