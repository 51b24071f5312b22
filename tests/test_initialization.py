"""Where a fresh ILLUME run's image-code rows start: from the semantic tokenizer's codebook
(`code_rows_from_codebook`, `init_parts.vision_embed_head`), checked against numpy and against
the shipped tokenizer's own codebook; a checkpoint that is not a tokenizer is named."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from unimodal_jax import checkpoints
from unimodal_jax.models import illume, vit
from unimodal_jax.models.decoder_config import DecoderConfig
from unimodal_jax.train import initialization

SHIPPED = "experiments/tiny/pretrained/shapes"


def test_code_rows_add_the_projected_unit_codebook_to_the_scaled_random_rows():
  rng = np.random.default_rng(0)
  emb = rng.standard_normal((6, 8)).astype(np.float32) * 0.02
  head = rng.standard_normal((8, 6)).astype(np.float32) * 0.02
  codebook = rng.standard_normal((6, 3)).astype(np.float32) * 5.0
  codebook[3] = codebook[1] * 2.0  # the same direction: the same geometric part
  new_emb, new_head = initialization.code_rows_from_codebook(emb, head, codebook, seed=7)
  geo = new_emb - emb / np.sqrt(2)
  np.testing.assert_allclose(new_head - head / np.sqrt(2), geo.T, atol=1e-7)
  np.testing.assert_allclose(geo[3], geo[1], atol=1e-7)
  # The projection of a unit vector has about the random rows' scale, not the codebook's.
  assert 0.005 < np.std(geo) < 0.05
  # Same seed, same rows; another seed, another projection.
  again = initialization.code_rows_from_codebook(emb, head, codebook, seed=7)[0]
  other = initialization.code_rows_from_codebook(emb, head, codebook, seed=8)[0]
  np.testing.assert_array_equal(again, new_emb)
  assert not np.allclose(other, new_emb)
  with pytest.raises(ValueError, match="disagree"):
    initialization.code_rows_from_codebook(emb, head, codebook[:5], seed=7)


def _illume(image_codes):
  llm = DecoderConfig(vocab_size=20, hidden_size=32, intermediate_size=64, num_layers=1,
                      num_heads=4, num_kv_heads=2, attention_impl="xla")
  vision = vit.VitConfig(image_size=8, patch_size=4, hidden_size=16, intermediate_size=32,
                         num_layers=1, num_heads=2)
  cfg = illume.IllumeConfig(llm=llm, vision=vision, image_codes=image_codes)
  model = illume.Illume(cfg)
  abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0),
                                          jnp.zeros((1, 8), jnp.int32))["params"])
  return model, cfg, abstract


def _train(parts):
  return ml_collections.ConfigDict({"train": {"seed": 3, "init_from": "", "init_parts": parts}})


def test_illume_code_rows_start_from_the_shipped_codebook(repo_root):
  tokenizer_dir = f"{repo_root}/{SHIPPED}/tokenizer"
  codebook = np.asarray(checkpoints.load_pretrained(tokenizer_dir)[1]["vq_stats"]["quantizer"]
                        ["codebook"])
  model, cfg, abstract = _illume(codebook.shape[0])
  logs = []
  params = initialization.initial_params(
      _train({initialization.CODEBOOK_PART: tokenizer_dir}), model, cfg, abstract, None,
      logs.append)
  random = nn.meta.unbox(jax.jit(model.init)(jax.random.key(3), jnp.zeros((1, 8), jnp.int32))
                         ["params"])
  want_emb, want_head = initialization.code_rows_from_codebook(
      random["vision_embed"]["embedding"], random["vision_head"]["kernel"], codebook, seed=3)
  np.testing.assert_allclose(params["vision_embed"]["embedding"], want_emb, atol=1e-6)
  np.testing.assert_allclose(params["vision_head"]["kernel"], want_head, atol=1e-6)
  # Everything else keeps the random init.
  for part in ("llm", "adapter", "vision_encoder"):
    for got, want in zip(jax.tree.leaves(params[part]), jax.tree.leaves(random[part])):
      np.testing.assert_array_equal(got, want)
  assert any("codebook" in line for line in logs)


def test_a_checkpoint_that_is_no_tokenizer_is_named(repo_root):
  model, cfg, abstract = _illume(2048)
  clip_dir = f"{repo_root}/{SHIPPED}/clip"
  with pytest.raises(ValueError, match="not a semantic tokenizer checkpoint"):
    initialization.initial_params(_train({initialization.CODEBOOK_PART: clip_dir}), model, cfg,
                                  abstract, None, print)
