"""DreamLLM's shipped diffusion decoder (experiments/tiny/pretrained/shapes_dreamllm): made with
exactly the main job's decoder config, on the text states of the CLIP the job reads images with
(whose text tokenizer ships beside it), loadable as a U-Net, and drawing what it is told."""
import json

import jax
import numpy as np
import pytest

from experiments.tiny import dreamllm_shapes
from unimodal_jax import checkpoints, pretrained
from unimodal_jax.pipeline import dreamllm_parts
from unimodal_jax.train import diffusion_decoder

CONFIG = dreamllm_shapes.get_config()
DIR = pretrained.directory_of(CONFIG.pretrained)
CLIP = pretrained.directory_of(CONFIG.encoder.clip_dir)


def test_manifest_records_the_decoder_config_and_the_clip_it_read():
  m = pretrained.read_manifest(DIR)
  assert m["config_sha256"] == pretrained.config_sha256(CONFIG.diffusion_decoder)
  assert m["config"] == json.loads(json.dumps(CONFIG.diffusion_decoder.to_dict()))
  assert m["command"].startswith("python tools/ship_pretrained.py")
  assert set(m["parts"]) == set(pretrained.DREAMLLM_PARTS)
  assert m["parts"]["diffusion_decoder"]["bytes"] < 20e6
  assert m["figures"]["clip"] == CONFIG.encoder.clip_dir
  # Held-out prompts drawn from CLIP text; shipped at 0.183 (docs/results.md). The judge needs
  # the asked shapes, colours and counts, which an unconditional draw matches by chance only.
  assert m["figures"]["geneval"]["overall"] >= 0.15
  dreamllm_parts.check_pair(CLIP, f"{DIR}/diffusion_decoder")  # raises for another CLIP
  assert pretrained.resolve(CONFIG.pretrained, CONFIG.diffusion_decoder,
                            pretrained.DREAMLLM_PARTS) == DIR


def test_the_decoder_loads_as_the_unet_the_model_config_names():
  unet, params = checkpoints.load_pretrained(f"{DIR}/diffusion_decoder")
  assert unet.config.to_dict()["kind"] == "unet"
  dec = CONFIG.diffusion_decoder
  side = dec.data.image_size // dec.pixel_patch
  assert (unet.config.sample_size, unet.config.in_channels) == (side, 3 * dec.pixel_patch ** 2)
  assert list(unet.config.block_out_channels) == dec.unet.block_out_channels
  text = diffusion_decoder.TextEncoder(CLIP)
  assert unet.config.cross_attention_dim == text.width
  # The DreamLLM model config the job builds takes exactly this U-Net.
  parts = dreamllm_parts.Parts(CLIP, f"{DIR}/diffusion_decoder", {})
  model = dreamllm_parts.model_dict(CONFIG, parts, 300)
  assert model["unet"]["block_out_channels"] == list(unet.config.block_out_channels)
  assert model["pixel_patch"] == dec.pixel_patch
  assert sum(x.size for x in jax.tree.leaves(params)) == pretrained.read_manifest(DIR)[
      "parts"]["diffusion_decoder"]["num_params"]


def test_text_states_pool_to_what_clip_was_trained_on():
  """The decoder reads every position's final-norm state; the position of EOS is the vector
  the contrastive tower pooled."""
  from unimodal_jax.models import clip as clip_lib
  from unimodal_jax.train import contrastive
  text = diffusion_decoder.TextEncoder(CLIP)
  prompts = ["a photo of a red circle", "two shapes: a blue square and a green triangle"]
  states = text(prompts)
  assert states.shape == (2, text.max_len, text.width)
  params, cfg = checkpoints.restore_params(CLIP)
  tokens = contrastive.tokenize(text.sp, prompts, text.max_len, "test")
  pooled = clip_lib.TextTransformer(text.config).apply({"params": params["text"]}, tokens)
  last = (tokens != 0).sum(1) - 1
  np.testing.assert_allclose(states[np.arange(2), last], np.asarray(pooled), atol=1e-5)
  # Causal: a later word changes later states, never earlier ones.
  pair = ["a photo of a red circle", "a photo of a red square"]
  again, ids = text(pair), contrastive.tokenize(text.sp, pair, text.max_len, "test")
  d = int(np.argmax(ids[0] != ids[1]))
  assert d > 0
  np.testing.assert_allclose(again[0, :d], again[1, :d], atol=1e-6)
  assert not np.allclose(again[0, d], again[1, d])


def test_a_changed_decoder_recipe_is_refused_by_name():
  changed = CONFIG.diffusion_decoder.copy_and_resolve_references()
  changed.schedule.prediction_type = "epsilon"
  with pytest.raises(ValueError, match=r"config\.diffusion_decoder .*schedule\.prediction_type"
                                       r".*pretrained=none"):
    pretrained.resolve(CONFIG.pretrained, changed, pretrained.DREAMLLM_PARTS,
                       "config.diffusion_decoder")


def test_query_counts_that_disagree_are_refused_by_name():
  """A command line that sets num_dream_queries alone would give documents with another number
  of query slots than the model has queries: the model config is refused, naming both."""
  config = dreamllm_shapes.get_config()
  config.num_dream_queries = 32
  with pytest.raises(ValueError,
                     match=r"num_dream_queries=32 but config\.format\.dream_queries=16"):
    dreamllm_parts.model_dict(config, parts=None, text_vocab_size=512)
