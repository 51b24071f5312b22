"""`model, params = load_pretrained(dir)` for every model kind: the saved config's `kind` picks the
model, and the loaded model computes what the saved one did."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unimodal_jax import checkpoints, load_pretrained
from unimodal_jax.models import build, clip, dreamllm, illume, vit
from unimodal_jax.models import pixel_decoder as pdec
from unimodal_jax.models import pixel_vq, unet, vae
from unimodal_jax.models import vision_tokenizer as vt
from unimodal_jax.models.decoder_config import DecoderConfig

LLM = DecoderConfig(vocab_size=20, hidden_size=32, intermediate_size=64, num_layers=2,
                    num_heads=4, num_kv_heads=2, attention_impl="xla")
VISION = vit.VitConfig(image_size=8, patch_size=4, hidden_size=16, intermediate_size=32,
                       num_layers=1, num_heads=2)
TEXT = clip.TextConfig(vocab_size=30, max_len=6, hidden_size=16, intermediate_size=32,
                       num_layers=1, num_heads=2)
TOKENIZER = vt.SemanticTokenizerConfig(feature_dim=16, num_tokens=4, codebook_size=32, code_dim=8,
                                       decoder_hidden=16, decoder_layers=1, decoder_heads=2,
                                       quantizer={"l2_normalized": True, "ema_decay": 0.9})
PIXELS = pdec.PixelDecoderConfig(architecture="conv", image_size=8, patch_size=2, hidden_size=16,
                                 num_layers=1, cond_blocks=1, cond_dim=16, cond_tokens=4)

PIXEL_VQ = pixel_vq.PixelVQConfig(image_size=8, width=8, downsample=1, codebook_size=16,
                                  code_dim=4, quantizer={"ema_decay": 0.9})

UNET = unet.UNetConfig(sample_size=8, block_out_channels=(8, 16),
                       down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                       num_attention_heads=(2, 2), cross_attention_dim=8, condition_length=3,
                       norm_num_groups=4, attention_impl="xla")
VAE = vae.VAEConfig(sample_size=8, block_out_channels=(8, 16), layers_per_block=1,
                    norm_num_groups=4, attention_impl="xla")
DREAMLLM = dreamllm.DreamLLMConfig(
    llm=LLM, vision=VISION, num_dream_queries=2, dream_image_size=8,
    unet=unet.UNetConfig(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8,),
                         down_block_types=("CrossAttnDownBlock2D",),
                         up_block_types=("CrossAttnUpBlock2D",), layers_per_block=1,
                         num_attention_heads=(2,), cross_attention_dim=8, norm_num_groups=4))
LATENTS = jax.random.normal(jax.random.key(3), (2, 8, 8, 4))
CONDITION = jax.random.normal(jax.random.key(4), (2, 3, 8))

TOKENS = jnp.asarray([[1, 5, 7, 2]], jnp.int32)
IMAGES = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
FEATURES = jax.random.normal(jax.random.key(2), (2, 4, 16))

# kind -> (config, init args, apply(model, params_or_variables) -> output to compare)
CASES = {
    "decoder": (LLM, (TOKENS,), lambda m, p: m.apply({"params": p}, TOKENS)),
    "illume": (illume.IllumeConfig(llm=LLM, vision=VISION, image_codes=9), (TOKENS,),
               lambda m, p: m.apply({"params": p}, TOKENS)),
    "vit": (VISION, (IMAGES,), lambda m, p: m.apply({"params": p}, IMAGES).last_hidden_state),
    "clip": (clip.ClipConfig(vision=VISION, text=TEXT, projection_dim=8), (IMAGES, TOKENS),
             lambda m, p: m.apply({"params": p}, IMAGES, method=m.encode_image)),
    "semantic_tokenizer": (TOKENIZER, (FEATURES,),
                           lambda m, v: m.apply(v, FEATURES, method=vt.SemanticTokenizer.encode)),
    "pixel_vq": (PIXEL_VQ, (IMAGES,),
                 lambda m, v: m.apply(v, IMAGES * 2 - 1, method=pixel_vq.PixelVQTokenizer.encode)),
    "pixel_decoder": (PIXELS, (jnp.zeros((2, 8, 8, 3)), jnp.zeros((2,)), FEATURES),
                      lambda m, p: m.apply({"params": p}, IMAGES * 2 - 1, jnp.full((2,), 0.3),
                                           FEATURES)),
    # Jitted: run op by op, a U-Net's many small convs take minutes.
    "unet": (UNET, (LATENTS, jnp.zeros((2,), jnp.int32), CONDITION),
             lambda m, p: jax.jit(lambda p: m.apply({"params": p}, LATENTS, jnp.asarray([5, 900]),
                                                     CONDITION))(p)),
    # The LM's logits and the U-Net's prediction from the query states' condition.
    "dreamllm": (DREAMLLM, (TOKENS,), lambda m, p: jax.jit(lambda p: jnp.concatenate([
        m.apply({"params": p}, TOKENS).ravel(),
        m.apply({"params": p}, IMAGES * 2 - 1, jnp.asarray([5, 900]),
                m.apply({"params": p}, TOKENS, positions=jnp.arange(4)[None],
                        segment_ids=jnp.ones_like(TOKENS), method="query_condition").repeat(
                            2, 0), method="denoise").ravel()]))(p)),
    "vae": (VAE, (IMAGES,), lambda m, p: jax.jit(
        lambda p: m.apply({"params": p}, IMAGES * 2 - 1, method="encode")[0])(p)),
}


def _saved(kind, directory):
  config, init_args, apply = CASES[kind]
  model = build.build(config)
  variables = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), *init_args))
  tree = variables if build.kind_of({"kind": kind}).variables else variables["params"]
  checkpoints.save_pretrained(str(directory), tree, config)
  return model, tree, apply


# The kinds slowest to build run with -m slow (a U-Net or a VAE compiles for ~30 s here).
@pytest.mark.parametrize("kind", [
    pytest.param(k, marks=pytest.mark.slow)
    if k in ("unet", "vae", "pixel_vq", "pixel_decoder", "dreamllm")
    else k for k in sorted(CASES)])
def test_each_kind_loads_as_itself(kind, tmp_path):
  model, tree, apply = _saved(kind, tmp_path / kind)
  loaded_model, loaded = load_pretrained(str(tmp_path / kind))
  assert type(loaded_model) is type(model)
  assert loaded_model.config == CASES[kind][0]
  np.testing.assert_array_equal(np.asarray(apply(loaded_model, loaded)),
                                np.asarray(apply(model, tree)))


def test_every_registered_kind_has_a_test():
  assert set(build.kinds()) == set(CASES)


def test_a_pipeline_workdir_loads_its_last_trained_stage(tmp_path):
  for stage, seed in (("stage1", 0), ("stage2", 1)):
    config = CASES["illume"][0]
    params = nn.meta.unbox(illume.Illume(config).init(jax.random.key(seed), TOKENS))["params"]
    checkpoints.save_pretrained(str(tmp_path / stage / checkpoints.TRAIN_SUBDIR), params, config)
  (tmp_path / "phases.json").write_text(json.dumps({"stage2": {}}))
  model, params = load_pretrained(str(tmp_path))
  assert isinstance(model, illume.Illume)
  _, stage2 = load_pretrained(str(tmp_path / "stage2"))
  jax.tree.map(np.testing.assert_array_equal, params, stage2)
  os.makedirs(tmp_path / "empty")
  (tmp_path / "empty" / "phases.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match="no trained stage yet"):
    load_pretrained(str(tmp_path / "empty"))


def test_provenance_is_ignored_and_old_decoder_checkpoints_load(tmp_path):
  """A tokenizer phase saves how it was trained beside its config; decoder checkpoints written
  before decoders said their kind load as decoders."""
  class Saved:  # save_pretrained stores to_dict() as the model config
    def __init__(self, d):
      self.d = d

    def to_dict(self):
      return self.d

  variables = nn.meta.unbox(vt.SemanticTokenizer(TOKENIZER).init(jax.random.key(0), FEATURES))
  checkpoints.save_pretrained(str(tmp_path / "tok"), variables, Saved(
      {**TOKENIZER.to_dict(), build.PROVENANCE: {"train": {"steps": 3}}}))
  model, _ = load_pretrained(str(tmp_path / "tok"))
  assert model.config == TOKENIZER

  legacy = {k: v for k, v in LLM.to_dict().items() if k != "kind"}
  params = nn.meta.unbox(build.build(LLM).init(jax.random.key(0), TOKENS))["params"]
  checkpoints.save_pretrained(str(tmp_path / "old"), params, Saved(legacy))
  model, _ = load_pretrained(str(tmp_path / "old"))
  assert model.config == LLM


def test_unknown_kind_is_named(tmp_path):
  _saved("vit", tmp_path / "vit")
  path = tmp_path / "vit" / "0" / checkpoints.MODEL_CONFIG / "metadata"
  path.write_text(json.dumps({**VISION.to_dict(), "kind": "hypernetwork"}))
  with pytest.raises(ValueError, match="model.kind='hypernetwork'; expected one of"):
    load_pretrained(str(tmp_path / "vit"))


def test_a_mesh_is_refused_for_kinds_without_sharding_rules(tmp_path):
  _saved("pixel_decoder", tmp_path / "pd")
  mesh = jax.make_mesh((1,), ("data",))
  with pytest.raises(ValueError, match="'pixel_decoder' model: load it without a mesh"):
    load_pretrained(str(tmp_path / "pd"), mesh=mesh)
