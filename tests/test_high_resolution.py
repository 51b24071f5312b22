"""Stage 3's high-resolution understanding: the slice grid chosen from the image's size, the
views cut from it, the token layout the formatter writes, token merging, and that each view's
features land in its own slots."""
import io

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from unimodal_jax.data import documents as D
from unimodal_jax.data import formatting, slicing
from unimodal_jax.data.vocab import SPECIALS, Vocab
from unimodal_jax.models import illume, vit
from unimodal_jax.models.decoder_config import DecoderConfig


@pytest.mark.parametrize("height,width,max_slices,grid", [
    (448, 896, 9, (1, 2)),      # two base areas side by side
    (896, 1344, 9, (2, 3)),     # six base areas, aspect 3:2
    (448, 448, 9, (1, 1)),      # one base area: no slices
    (480, 500, 9, (1, 1)),      # just over one area: the 1 x 1 grid matches the aspect best
    (4000, 4000, 9, (3, 3)),    # capped at 9 slices
    (300, 2000, 9, (1, 3)),     # 2.99 areas, very wide: 1 x 3 is nearest the aspect of 6.7
    (2000, 300, 9, (3, 1)),     # the same image turned
    (896, 896, 9, (2, 2)),      # 1 x 1 and 2 x 2 tie on aspect: more slices win
    (4000, 4000, 0, (1, 1)),    # slicing off
    (4000, 4000, 4, (2, 2)),
])
def test_grid_follows_size_and_aspect(height, width, max_slices, grid):
  assert slicing.choose_grid(height, width, 448, max_slices) == grid


def test_grid_refuses_an_empty_image():
  with pytest.raises(ValueError, match="0 x 5"):
    slicing.choose_grid(0, 5, 448, 9)


def test_views_are_the_global_view_then_slices_row_by_row():
  """A 4 x 6 image (H x W) of six 2 x 2 blocks at base 2, cut 2 x 3: each slice is one block,
  in row-major order (PIL's resize to the same size copies the image, so the blocks are exact)."""
  blocks = np.arange(6, dtype=np.uint8).reshape(2, 3) * 40
  image = np.repeat(np.repeat(blocks, 2, 0), 2, 1)[..., None].repeat(3, -1)
  views = slicing.slice_views(image, 2, (2, 3))
  assert views.shape == (7, 2, 2, 3)
  for k in range(6):
    np.testing.assert_array_equal(views[1 + k], np.full((2, 2, 3), blocks.ravel()[k]))
  np.testing.assert_array_equal(
      views[0], np.asarray(Image.fromarray(image).resize((2, 2), Image.BICUBIC)))
  assert slicing.slice_views(image, 2, (1, 1)).shape == (1, 2, 2, 3)


class _Pieces:
  """A stand-in text tokenizer: one id per word (ids 5..)."""

  def encode(self, text):
    return [5 + len(w) for w in text.split()]


VOCAB = Vocab(text_size=20, image_codes=9)


def _png(h, w):
  rng = np.random.default_rng(h * 1000 + w)
  out = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(out, "PNG")
  return out.getvalue()


def test_formatter_writes_the_sliced_layout():
  """A 16 x 32 caption image at base 16, 4 slots per view: grid 1 x 2, so
  BOS <image_start> P <slice_sep> P P <image_end> caption EOS, and 3 views."""
  cfg = formatting.FormatConfig(max_length=64, image_size=16, tokens_per_image=4, max_images=4,
                                max_slices=9, text_dropout=0.0)
  png = _png(16, 32)
  doc = D.Document("d", "caption", [D.Segment.of_image(png), D.Segment.of_text("a box")])
  ex = formatting.Formatter(_Pieces(), VOCAB, cfg)(doc)
  v, p = VOCAB, [VOCAB.image_patch] * 4
  expected = ([v.bos_id, v.image_start] + p + [v.slice_sep] + p + p + [v.image_end]
              + [6, 8, v.eos_id])
  assert list(ex["inputs"]) + [int(ex["targets"][-1])] == expected
  assert ex["target_mask"].sum() == 3  # the caption and EOS only
  whole = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
  np.testing.assert_array_equal(ex["images"], slicing.slice_views(whole, 16, (1, 2)))
  # Slicing off: one center-cropped view, the plain layout.
  plain = formatting.Formatter(_Pieces(), VOCAB, formatting.FormatConfig(
      max_length=64, image_size=16, tokens_per_image=4, max_images=4, text_dropout=0.0))(doc)
  assert plain["images"].shape == (1, 16, 16, 3)
  assert list(plain["inputs"][:7]) == [v.bos_id, v.image_start] + p + [v.image_end]


def test_formatter_counts_views_against_max_images():
  cfg = formatting.FormatConfig(max_length=200, image_size=16, tokens_per_image=4,
                                max_images=4, max_slices=9, text_dropout=0.0)
  doc = D.Document("d", "caption", [D.Segment.of_image(_png(32, 32)), D.Segment.of_text("a")])
  with pytest.raises(formatting.Skip, match="more than 4 images to read .views"):
    formatting.Formatter(_Pieces(), VOCAB, cfg)(doc)  # 2 x 2 slices + global = 5 views


def test_merge_tokens_concatenates_each_block_of_neighbours():
  g, k, c = 4, 2, 3
  patches = np.arange(2 * g * g * c, dtype=np.float32).reshape(2, g * g, c)
  merged = np.asarray(illume.merge_tokens(jnp.asarray(patches), k))
  assert merged.shape == (2, (g // k) ** 2, k * k * c)
  grid = patches.reshape(2, g, g, c)
  for n in range(2):
    for by in range(g // k):
      for bx in range(g // k):
        want = np.concatenate([grid[n, by * k + dy, bx * k + dx]
                               for dy in range(k) for dx in range(k)])
        np.testing.assert_array_equal(merged[n, by * (g // k) + bx], want)


LLM = DecoderConfig(vocab_size=20 + len(SPECIALS), hidden_size=32, intermediate_size=64,
                    num_layers=1, num_heads=4, num_kv_heads=2, attention_impl="xla")
VISION = vit.VitConfig(image_size=16, patch_size=4, hidden_size=16, intermediate_size=32,
                       num_layers=1, num_heads=2)


def test_config_refuses_a_merge_that_does_not_divide_the_grid():
  with pytest.raises(ValueError, match="token_merge=3"):
    illume.IllumeConfig(llm=LLM, vision=VISION, image_codes=9, token_merge=3)


def test_each_view_lands_in_its_slots():
  """A sliced image read by a model with 2 x 2 token merging: 16 patches -> 4 slots per view;
  the k-th view's merged, adapted features sit at the k-th group of <image_patch> slots, and
  every other position keeps its token embedding."""
  cfg = illume.IllumeConfig(llm=LLM, vision=VISION, image_codes=9, token_merge=2)
  assert cfg.tokens_per_image == 4 and cfg.vocab == VOCAB
  model = illume.Illume(cfg)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0),
                                             jnp.zeros((1, 4), jnp.int32))["params"])
  assert sum(x.size for x in jax.tree.leaves(params)) == cfg.num_params()
  fmt = formatting.FormatConfig(max_length=64, image_size=16, tokens_per_image=4, max_images=4,
                                max_slices=9, text_dropout=0.0)
  doc = D.Document("d", "caption", [D.Segment.of_image(_png(16, 32)), D.Segment.of_text("a box")])
  ex = formatting.Formatter(_Pieces(), VOCAB, fmt)(doc)
  tokens, images = jnp.asarray(ex["inputs"][None]), jnp.asarray(ex["images"][None])
  x = np.asarray(model.apply({"params": params}, tokens, images, method=illume.Illume.embed))[0]
  plain = np.asarray(model.apply({"params": params}, tokens, method=illume.Illume.embed))[0]
  row = list(ex["inputs"])
  slots = [i for i, t in enumerate(row) if t == VOCAB.image_patch]
  assert len(slots) == 12
  for view in range(3):
    feats = model.apply({"params": params}, images[0, view], method=illume.Illume.image_features)
    np.testing.assert_allclose(x[slots[4 * view:4 * view + 4]], np.asarray(feats), atol=1e-6)
  others = [i for i in range(len(row)) if i not in slots]
  np.testing.assert_array_equal(x[others], plain[others])
  # The views differ, so a view in the wrong group would have failed above.
  assert not np.allclose(x[slots[0]], x[slots[4]])
