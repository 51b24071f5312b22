"""The parts the main job ships (experiments/tiny/pretrained/shapes): made with exactly the main
job's tokenizer config, each loadable by its kind with the recipe's shapes, and working: the
tokenizer reconstructs held-out features and the codec draws what it was given."""
import copy
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.tiny import illume_shapes
from unimodal_jax import checkpoints, pretrained
from unimodal_jax.models import build

CONFIG = illume_shapes.get_config()
DIR = pretrained.directory_of(CONFIG.pretrained)


def test_manifest_records_the_main_jobs_tokenizer_config_and_how_it_was_made():
  m = pretrained.read_manifest(DIR)
  assert m["config_sha256"] == pretrained.config_sha256(CONFIG.tokenizer)
  assert pretrained.canonical(m["config"]) == pretrained.canonical(CONFIG.tokenizer)
  assert m["command"].startswith("python tools/ship_pretrained.py")
  assert set(m["parts"]) == set(pretrained.PARTS)
  for part, info in m["parts"].items():
    assert info["bytes"] < 12e6, (part, info)  # small: every retrain adds to the history
  # The figures it was shipped with: the judge finds the same objects in most reconstructions.
  assert m["figures"]["semantic_tokenizer"]["judge_same_objects"] >= 0.8
  assert m["figures"]["semantic_tokenizer"]["tokens_per_image"] == 64


def test_an_option_added_at_its_old_behaviour_keeps_the_recipes_identity():
  """encoder_layer came after the parts were shipped: at -1 (the last layer, what they were
  trained on) the recipe hashes as before, so the parts and older workdirs' config.json still
  match; any other layer is another recipe, refused by name."""
  config = copy.deepcopy(CONFIG.tokenizer)
  assert config.tokenizer.encoder_layer == -1
  older = config.to_dict()
  del older["tokenizer"]["encoder_layer"]
  assert pretrained.config_sha256(older) == pretrained.config_sha256(config)
  config.tokenizer.encoder_layer = 1
  assert pretrained.config_sha256(config) != pretrained.config_sha256(older)
  with pytest.raises(ValueError, match=r"differing keys: \['tokenizer.encoder_layer'\]"):
    pretrained.resolve(CONFIG.pretrained, config)


def test_the_recipes_hash_does_not_depend_on_where_the_repository_lies():
  """CI clones elsewhere than /work/main: a path written into the config would change its
  sha256 there and refuse the shipped parts. Paths in the recipe are relative to the root."""
  def strings(d):
    for v in d.values():
      yield from strings(v) if isinstance(v, dict) else ([v] if isinstance(v, str) else [])
  absolute = [s for s in strings(CONFIG.tokenizer.to_dict()) if s.startswith("/")]
  assert not absolute, absolute
  assert os.path.exists(pretrained.directory_of(CONFIG.tokenizer.encoder.clip_config))


def test_each_part_loads_by_kind_with_the_recipes_shapes():
  t = CONFIG.tokenizer
  clip, _ = checkpoints.load_pretrained(f"{DIR}/clip")
  assert clip.config.to_dict()["kind"] == "clip"
  assert clip.config.vision.image_size == t.data.image_size
  assert (clip.config.vision.image_size // clip.config.vision.patch_size) ** 2 == 64
  tok, variables = checkpoints.load_pretrained(f"{DIR}/tokenizer")
  assert set(variables) == {"params", "vq_stats"}  # the EMA codebook travels with it
  for key in ("codebook_size", "code_dim", "decoder_hidden", "decoder_layers"):
    assert getattr(tok.config, key) == t.tokenizer[key], key
  assert tok.config.num_tokens == 64
  pixels, _ = checkpoints.load_pretrained(f"{DIR}/pixel_decoder")
  for key in ("architecture", "patch_size", "hidden_size", "num_layers", "cond_blocks"):
    assert getattr(pixels.config, key) == t.pixel_decoder[key], key
  assert pixels.config.cond_tokens == 64


def test_shipped_codec_reconstructs_held_out_scenes():
  """Held-out scenes (the eval seed): the quantized features keep their direction, and the
  pixel decoder draws scenes in which the judge finds objects of the originals."""
  from unimodal_jax.data.worlds import shapes
  from unimodal_jax.eval import shapes_judge
  from unimodal_jax.models.image_codec import ImageCodec
  codec = ImageCodec.load(DIR)
  docs = [shapes.make_document(int(CONFIG.data.eval_seed), i, "caption", size=32)
          for i in range(16)]
  images = np.stack([shapes.decode_image(d.segments[0].image) for d in docs])
  feats = jax.jit(codec._features)(jnp.asarray(images))
  recon = codec.decode_features(codec.tokenize(images))
  cos = jnp.sum(feats * recon, -1) / (jnp.linalg.norm(feats, axis=-1)
                                      * jnp.linalg.norm(recon, axis=-1))
  assert float(cos.mean()) > 0.95
  drawn = codec.detokenize(codec.tokenize(images), jax.random.key(0), steps=16)
  found = [shapes_judge.same_objects(shapes_judge.detect(im),
                                     shapes.scene_from_description(d.metadata["scene"]).objects)
           for im, d in zip(drawn, docs)]
  assert np.mean(found) >= 0.5



def test_the_main_job_writes_the_backgrounds_patches_as_one_code_per_position():
  """The shipped codec gives pixel-identical background patches of held-out scenes many codes
  (its encoder is contextual); the main job's codec (recipe.load_codec, canonical_background)
  writes each such patch as an all-background image's code at that position and keeps every
  other patch's code."""
  from unimodal_jax.data.worlds import shapes
  from unimodal_jax.models import image_codec
  from unimodal_jax.pipeline import recipe
  assert CONFIG.data.canonical_background
  codec = recipe.load_codec(CONFIG, DIR)
  assert codec.background_rgb == tuple(shapes.BACKGROUND)
  docs = [shapes.make_document(int(CONFIG.data.eval_seed), i, "caption", size=32)
          for i in range(24)]
  images = np.stack([shapes.decode_image(d.segments[0].image) for d in docs])
  shipped = image_codec.ImageCodec.load(DIR)
  own = shipped.tokenize(images)
  ids = codec.tokenize(images)
  flat = image_codec.flat_patches(images, codec.tokens_per_image, shapes.BACKGROUND)
  plain = shipped.tokenize(
      np.broadcast_to(np.asarray(shapes.BACKGROUND, np.uint8), (1, 32, 32, 3)))
  assert flat.mean() > 0.5
  np.testing.assert_array_equal(ids, np.where(flat, plain, own))
  distinct_at = [len(np.unique(own[:, p][flat[:, p]])) for p in range(64) if flat[:, p].sum() > 8]
  assert np.mean(distinct_at) > 2  # what canonical_background removes


def test_a_changed_recipe_is_refused_by_name(tmp_path):
  changed = copy.deepcopy(CONFIG.tokenizer)
  changed.tokenizer.codebook_size = 512
  with pytest.raises(ValueError, match=r"tokenizer\.codebook_size.*pretrained=none"):
    pretrained.resolve(CONFIG.pretrained, changed)
  with pytest.raises(FileNotFoundError, match="MANIFEST.json"):
    pretrained.resolve(str(tmp_path), CONFIG.tokenizer)
  assert pretrained.resolve(CONFIG.pretrained, CONFIG.tokenizer) == DIR


def test_weights_digest_follows_the_weights_not_the_files(tmp_path):
  """Shipping the same weights again keeps the digest (a workdir's phases stay valid); a changed
  weight changes it (they run again)."""
  digest = pretrained.weights_digest(DIR, "tokenizer")
  pretrained.ship(DIR, str(tmp_path / "again"), CONFIG.tokenizer, figures={}, command="test")
  assert pretrained.weights_digest(str(tmp_path / "again"), "tokenizer") == digest
  params, stored = checkpoints.restore_params(f"{DIR}/tokenizer")
  params = jax.tree.map(np.asarray, params)
  leaves, treedef = jax.tree.flatten(params)
  leaves[0] = leaves[0] + np.asarray(1e-3, leaves[0].dtype)
  checkpoints.save_pretrained(str(tmp_path / "changed" / "tokenizer"),
                              jax.tree.unflatten(treedef, leaves), stored)
  assert pretrained.weights_digest(str(tmp_path / "changed"), "tokenizer") != digest
