"""The unified ILLUME model: where the adapter's features land, the two vocabularies' embeddings
and heads, and the Table 5 stage configs' trainable/frozen parts."""
import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unimodal_jax.models import build, illume, vit
from unimodal_jax.models.decoder import Decoder
from unimodal_jax.models.decoder_config import DecoderConfig
from unimodal_jax.train import optimizer

LLM = DecoderConfig(vocab_size=20, hidden_size=32, intermediate_size=64, num_layers=2,
                    num_heads=4, num_kv_heads=2, attention_impl="xla")
VISION = vit.VitConfig(image_size=8, patch_size=4, hidden_size=16, intermediate_size=32,
                       num_layers=1, num_heads=2)
CONFIG = illume.IllumeConfig(llm=LLM, vision=VISION, image_codes=9)


@pytest.fixture(scope="module")
def model_and_params():
  model = illume.Illume(CONFIG)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  return model, nn.meta.unbox(params)


def test_init_creates_every_part_with_the_counted_size(model_and_params):
  _, params = model_and_params
  assert set(params) == {"llm", "vision_encoder", "adapter", "vision_embed", "vision_head"}
  assert sum(x.size for x in jax.tree.leaves(params)) == CONFIG.num_params()
  assert params["vision_embed"]["embedding"].shape == (9, 32)
  assert params["vision_head"]["kernel"].shape == (32, 9)
  assert CONFIG.vocab_size == 29 and CONFIG.vocab.image_offset == 20


def test_splice_puts_each_images_features_at_its_slots_in_order(model_and_params):
  """Two images in one row (as packing leaves them): the k-th <image_patch> gets the k-th patch
  feature of the row's images in order; every other slot keeps its token embedding."""
  model, params = model_and_params
  v = CONFIG.vocab
  p = CONFIG.tokens_per_image  # 4
  row = ([v.bos_id, 5] + [v.image_start] + [v.image_patch] * p + [v.image_end] + [6, 7]
         + [v.image_start] + [v.image_patch] * p + [v.image_end] + [v.image_offset + 3])
  tokens = jnp.asarray([row], jnp.int32)
  images = jax.random.randint(jax.random.key(1), (1, 2, 8, 8, 3), 0, 256).astype(jnp.uint8)
  x = model.apply({"params": params}, tokens, images, method=illume.Illume.embed)
  feats = model.apply({"params": params}, images[0], method=illume.Illume.image_features)
  plain = model.apply({"params": params}, tokens, method=illume.Illume.embed)
  slots = [i for i, t in enumerate(row) if t == v.image_patch]
  expected = np.asarray(feats).reshape(2 * p, -1)
  np.testing.assert_allclose(np.asarray(x[0, slots]), expected, atol=1e-6)
  others = [i for i in range(len(row)) if i not in slots]
  np.testing.assert_array_equal(np.asarray(x[0, others]), np.asarray(plain[0, others]))
  # An image code reads its own embedding row; text reads the LLM's.
  np.testing.assert_array_equal(np.asarray(x[0, -1]), np.asarray(params["vision_embed"]["embedding"][3]))
  np.testing.assert_array_equal(np.asarray(x[0, 1]), np.asarray(params["llm"]["embed_tokens"]["embedding"][5]))


def test_logits_are_the_text_head_then_the_image_head(model_and_params):
  model, params = model_and_params
  tokens = jnp.asarray([[2, 5, 21, 7, 27]], jnp.int32)
  logits = model.apply({"params": params}, tokens)
  assert logits.shape == (1, 5, CONFIG.vocab_size)
  x = model.apply({"params": params}, tokens, method=illume.Illume.embed)
  text, hidden = Decoder(LLM).apply({"params": params["llm"]}, inputs_embeds=x,
                                    return_hidden=True)
  np.testing.assert_allclose(logits[..., :20], text, atol=1e-5)
  np.testing.assert_allclose(logits[..., 20:], hidden @ params["vision_head"]["kernel"],
                             atol=1e-5)


def test_config_round_trip_and_errors():
  d = CONFIG.to_dict()
  assert build.config_from_dict(d) == CONFIG
  with pytest.raises(ValueError, match="model.vision is missing"):
    illume.IllumeConfig.from_dict({"kind": "illume", "llm": LLM.to_dict(), "image_codes": 3})
  with pytest.raises(ValueError, match="image_codes"):
    CONFIG.replace(image_codes=0)
  with pytest.raises(ValueError, match="model.kind='dream'"):
    build.config_from_dict({"kind": "dream"})


def _labels(stage_module):
  config = importlib.import_module(f"experiments.illume.{stage_module}").get_config()
  model_config = build.config_from_dict(config.model.to_dict())
  model = build.build(model_config)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
  params = nn.meta.unbox(params["params"])
  groups = optimizer.parse_groups(config.optimizer.groups.to_dict())
  labels = optimizer.label_params(params, groups)
  by_part = {}
  for path, label in jax.tree_util.tree_flatten_with_path(labels)[0]:
    by_part.setdefault(str(path[0].key), set()).add(label)
  rates = {g.name: (None if g.frozen else g.learning_rate) for g in groups}
  return config, {part: {rates[l] for l in ls} for part, ls in by_part.items()}


@pytest.mark.parametrize("stage,expected,batch,steps", [
    ("stage1", {"llm": {None}, "vision_encoder": {None}, "adapter": {1e-3},
                "vision_embed": {2e-4}, "vision_head": {2e-4}}, 256, 5000),
    ("stage2", {"llm": {5e-5}, "vision_encoder": {None}, "adapter": {5e-5},
                "vision_embed": {5e-5}, "vision_head": {5e-5}}, 1024, 15000),
    ("stage3", {"llm": {2e-5}, "vision_encoder": {2e-6}, "adapter": {2e-5},
                "vision_embed": {2e-5}, "vision_head": {2e-5}}, 1024, 8000),
])
def test_stage_configs_carry_table5(stage, expected, batch, steps):
  """Every parameter of Vicuna-7B + ViT-L + adapter + 16,384 codes is in exactly the group
  Table 5 says: frozen (None) or trained at its learning rate."""
  config, rates = _labels(stage)
  assert rates == expected
  assert config.global_batch == batch and config.train.steps == steps
  assert config.model.image_codes == 16_384 and config.data.format.tokens_per_image == 256
  # ILLUME's base 448 px, 256 tokens per view (32 x 32 patches merged 2 x 2); stage 3 slices.
  model_cfg = illume.IllumeConfig.from_dict(config.model.to_dict())
  assert config.model.vision.image_size == 448 and model_cfg.tokens_per_image == 256
  assert config.data.format.max_slices == (9 if stage == "stage3" else 0)


def test_tiny_stage_overrides_cannot_unfreeze_a_table5_frozen_part():
  from experiments.illume import table5
  groups = table5.optimizer_groups(1, learning_rates={"llm": 1.0, "adapter": 3e-3})
  assert groups["llm"] == {"pattern": illume.GROUP_PATTERNS["llm"], "frozen": True}
  assert groups["adapter"]["learning_rate"] == 3e-3
  with pytest.raises(ValueError, match="unknown part"):
    table5.optimizer_groups(2, learning_rates={"encoder": 1.0})


def test_stage1_train_step_moves_only_the_adapter_and_vision_rows(model_and_params):
  """A train step with stage 1's groups on a batch that reads an image and writes codes: the
  LLM and the encoder stay bit-identical, the adapter and the image rows move, and the loss is
  reported per modality."""
  from experiments.illume import table5
  from unimodal_jax.train import step as step_lib
  from unimodal_jax.train.state import TrainState
  model, params = model_and_params
  opt = {"learning_rate": 0.0, "warmup_steps": 0, "schedule": "constant",
         "groups": table5.optimizer_groups(1, learning_rates={"adapter": 1e-2,
                                                               "vision_embed_head": 1e-2})}
  tx, schedules = optimizer.build(opt, params, 10)
  frozen = optimizer.frozen_mask(params, optimizer.parse_groups(opt["groups"]))
  v = CONFIG.vocab
  p = CONFIG.tokens_per_image
  seq = ([v.bos_id, v.image_start] + [v.image_patch] * p + [v.image_end, v.image_start]
         + [v.image_token(c) for c in (1, 5, 2, 7)] + [v.image_end, 5])
  tokens = np.asarray([seq, seq], np.int32)
  mask = np.zeros_like(tokens[:, 1:], np.float32)
  mask[:, 6:] = 1.0  # from the written <image_start> on
  modality = np.zeros_like(tokens[:, 1:])
  modality[:, 6:12] = 1  # start, 4 codes, end; then one text token
  batch = {"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:]),
           "target_mask": jnp.asarray(mask), "target_modality": jnp.asarray(modality),
           "images": jax.random.randint(jax.random.key(3), (2, 1, 8, 8, 3), 0, 256
                                        ).astype(jnp.uint8)}
  zero = jnp.zeros((), jnp.int32)
  state = TrainState(step=zero, params=params, opt_state=tx.init(params),
                     rng=jnp.zeros((2,), jnp.uint32), nonfinite_steps=zero,
                     consecutive_nonfinite=zero)
  train_step = jax.jit(step_lib.make_train_step(model, tx, frozen, schedules))
  new, metrics = train_step(state, batch)
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), params, new.params)
  assert not any(jax.tree.leaves(changed["llm"]))
  assert not any(jax.tree.leaves(changed["vision_encoder"]))
  assert all(jax.tree.leaves(changed["adapter"]))
  assert changed["vision_embed"]["embedding"] and changed["vision_head"]["kernel"]
  assert float(metrics["loss/image"]) > 0 and float(metrics["loss/text"]) > 0
  # The adapter learns only through the image slots: its gradient is non-zero.
  assert float(metrics["grad_norm"]) > 0
