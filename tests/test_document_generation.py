"""sampling.generate_document, interleaved generation, for a DreamLLM and an ILLUME model: the
document it returns is laid out as training lays out the same document, each image sits where
the model chose to place one (its greedy choice, by a full forward pass), the text after an image
reads that image, and the limits end a document where they say."""
import io

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from unimodal_jax import sampling
from unimodal_jax.data import documents as D
from unimodal_jax.data import formatting
from unimodal_jax.data.vocab import SPECIALS, Vocab
from unimodal_jax.models import dreamllm, illume, unet, vit
from unimodal_jax.models.decoder_config import DecoderConfig
from unimodal_jax.pipeline import evaluate

TEXT, QUERIES, CODES = 20, 4, 12
LLM = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
           attention_impl="xla", max_seq_len=160)
VISION = vit.VitConfig(image_size=16, patch_size=4, hidden_size=16, intermediate_size=32,
                       num_layers=2, num_heads=2)
DREAM = dreamllm.DreamLLMConfig(
    llm=DecoderConfig(vocab_size=TEXT + len(SPECIALS), **LLM), vision=VISION,
    unet=unet.UNetConfig(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16,),
                         down_block_types=("CrossAttnDownBlock2D",),
                         up_block_types=("CrossAttnUpBlock2D",), layers_per_block=1,
                         num_attention_heads=(2,), cross_attention_dim=24, norm_num_groups=8,
                         condition_length=QUERIES),
    num_dream_queries=QUERIES, dream_image_size=8, token_merge=2)
ILLUME = illume.IllumeConfig(llm=DecoderConfig(vocab_size=TEXT + len(SPECIALS), **LLM),
                             vision=VISION, image_codes=CODES, token_merge=2)
PROMPT = "w7 w9 w4"


class _Words:
  """A text tokenizer whose decode and encode are exact inverses: id i is the word "w{i}"."""

  def encode(self, text):
    return [int(w[1:]) for w in text.split()]

  def decode(self, ids):
    return " ".join(f"w{i}" for i in ids)


def _sharpened(model, seed, place_token, boost):
  """Random weights, the head's column of the image-placing token scaled by `boost` so that a
  greedy model places images at some steps and writes text at others."""
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(seed),
                                             jnp.zeros((1, 8), jnp.int32))["params"])
  params = jax.tree.map(lambda x: x * 3.0 if x.ndim == 2 else x, params)  # sharper logits
  head = params["llm"]["lm_head"]["kernel"]
  params["llm"]["lm_head"]["kernel"] = head.at[:, place_token].multiply(boost)
  return params


class _CodesDrawer:
  """ILLUME's drawer with its pixel decoder replaced by a fixed colouring of the codes (the codes
  are the model's own, greedy): the document loop is what is tested here."""
  batch = 4

  def __init__(self, model, params, formatter):
    self.model, self.params, self.formatter = model, params, formatter

  def drawn(self, conds, unconds, seed):
    v = self.formatter.vocab
    tokens, mask = sampling.left_pad([c[0] + [v.image_start] for c in conds])
    size = self.formatter.config.image_size
    images = np.zeros((len(conds), self.formatter.config.max_images, size, size, 3), np.uint8)
    for i, (_, views) in enumerate(conds):
      images[i, :len(views)] = views
    codes = np.asarray(sampling.generate_image(
        self.model, self.params, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(seed),
        tokens_per_image=4, image_offset=v.image_offset,
        image_codes=v.image_codes, temperature=0.0, images=jnp.asarray(images)))
    side = np.sqrt(codes.shape[1]).astype(int)
    pixels = (codes.reshape(-1, side, side, 1) * 20 + np.array([0, 60, 120])).astype(np.uint8)
    return np.repeat(np.repeat(pixels, size // side, 1), size // side, 2), codes


@pytest.fixture(scope="module", params=["dreamllm", "illume"])
def setup(request):
  if request.param == "dreamllm":
    vocab = Vocab(text_size=TEXT)
    formatter = formatting.Formatter(_Words(), vocab, formatting.FormatConfig(
        max_length=160, image_size=16, tokens_per_image=4, max_images=4, text_dropout=0.0,
        dream_queries=QUERIES, dream_image_size=8, max_dream_images=4))
    model = dreamllm.DreamLLM(DREAM)
    params = _sharpened(model, 0, vocab.dream_start, 4.0)
    draw = evaluate.DreamDrawer(model, params, formatter, steps=2, guidance=2.0, batch=4)
  else:
    vocab = Vocab(text_size=TEXT, image_codes=CODES)
    formatter = formatting.Formatter(_Words(), vocab, formatting.FormatConfig(
        max_length=160, image_size=16, tokens_per_image=4, max_images=4, text_dropout=0.0))
    model = illume.Illume(ILLUME)
    params = _sharpened(model, 1, vocab.image_start, 4.0)
    draw = _CodesDrawer(model, params, formatter)
  return request.param, model, params, formatter, draw


def _generate(setup, prompts, **kw):
  _, model, params, formatter, draw = setup
  kw = dict(dict(max_images=3, max_new_tokens=24, temperature=0.0, round_tokens=8), **kw)
  return sampling.generate_document(model, params, formatter, draw, prompts, **kw)


def _logits(model, params, tokens, views, size=16, slots=4):
  images = np.zeros((1, slots, size, size, 3), np.uint8)
  if len(views):
    images[0, :len(views)] = views
  return np.asarray(jax.jit(lambda p, t, im: model.apply({"params": p}, t, images=im))(
      params, jnp.asarray([tokens]), jnp.asarray(images)))[0]


def test_documents_are_laid_out_as_training_lays_them_out_and_place_images_where_the_model_chose(
    setup):
  kind, model, params, formatter, _ = setup
  v = formatter.vocab
  place = v.dream_start if kind == "dreamllm" else v.image_start
  docs = _generate(setup, [PROMPT, "w11 w5"])
  assert any(sum(s.type == "image" for s in d.segments) >= 1 for d in docs)
  assert any(any(s.type == "text" for s in d.segments[1:]) for d in docs)
  for doc in docs:
    assert doc.segments[0].text and doc.segments[0].text in (PROMPT, "w11 w5")
    assert sum(s.type == "image" for s in doc.segments) <= 3
    assert doc.stop in ("eos", "max_new_tokens", "max_images", "context")
    # The same segments as a training document (ILLUME: each image's codes written, then read).
    ex = formatter(D.Document("d", "interleaved", _with_codes(doc)))
    assert list(ex["inputs"]) == doc.tokens
    assert np.array_equal(ex["images"], np.asarray(doc.views).reshape(ex["images"].shape))
    # Every token the model chose (text, end, where an image goes) is its greedy choice among
    # the text, end-of-sequence and image-placing tokens, read with the images it placed.
    logits = _logits(model, params, doc.tokens, doc.views)
    allowed = np.full(logits.shape[-1], -np.inf)
    allowed[:v.text_size] = 0
    allowed[[v.eos_id, place]] = 0
    start = len(formatter.sp.encode(doc.segments[0].text))  # the prompt's last position
    chosen = [t for t in range(start, len(doc.tokens) - 1)
              if ex["target_mask"][t] and (ex["targets"][t] < v.text_size or
                                           ex["targets"][t] in (v.eos_id, place))]
    assert chosen
    for t in chosen:
      assert np.argmax(logits[t] + allowed) == ex["targets"][t], (kind, t)
    if doc.stop == "eos":  # the end, too, was its choice
      assert np.argmax(logits[-1] + allowed) == v.eos_id


def _with_codes(doc):
  """The document's segments with ILLUME's written codes before each image, as its training
  documents have them (pipeline/pretokenize.py's stories)."""
  codes = iter(doc.codes)
  out = []
  for seg in doc.segments:
    if seg.type == "image" and doc.codes:
      out.append(D.Segment.of_image_tokens(next(codes)))
    out.append(seg)
  return out


def test_the_text_after_an_image_reads_that_image(setup):
  kind, model, params, formatter, _ = setup
  v = formatter.vocab
  doc = next(d for d in _generate(setup, [PROMPT, "w11 w5"])
             if any(s.type == "image" for s in d.segments[:-1]))
  read_end = doc.tokens.index(v.image_end, doc.tokens.index(v.image_patch))
  logits = _logits(model, params, doc.tokens, doc.views)
  other = [np.full_like(doc.views[0], 200)] + list(doc.views[1:])
  changed = _logits(model, params, doc.tokens, other)
  first_patch = doc.tokens.index(v.image_patch)
  np.testing.assert_allclose(changed[:first_patch], logits[:first_patch], atol=1e-5)
  assert np.abs(changed[read_end:] - logits[read_end:]).max() > 1e-3


def test_limits_end_a_document_where_they_say(setup):
  kind, *_ = setup
  long = _generate(setup, [PROMPT, "w11 w5"], max_images=3)
  short = _generate(setup, [PROMPT, "w11 w5"], max_images=1)
  assert max(sum(s.type == "image" for s in d.segments) for d in long) >= 2  # the limit bites
  for a, b in zip(long, short):
    n = sum(s.type == "image" for s in a.segments)
    assert sum(s.type == "image" for s in b.segments) == min(n, 1)
    if n >= 2:  # it wanted a second image: the short one ends where that image would go
      assert b.stop == "max_images"
      second = [i for i, s in enumerate(a.segments) if s.type == "image"][1]
      assert [s.text for s in b.segments] == [s.text for s in a.segments[:second]]
  few = _generate(setup, [PROMPT], max_images=0, max_new_tokens=3)[0]
  text = sum(len(s.text.split()) for s in few.segments[1:])
  assert text <= 3 and not any(s.type == "image" for s in few.segments)
  assert few.stop in ("eos", "max_new_tokens", "max_images")
