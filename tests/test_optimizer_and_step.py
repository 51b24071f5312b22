"""Parameter groups, per-group learning rates, frozen groups, gradient accumulation, NaN skipping."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unimodal_jax import sharding
from unimodal_jax.train import optimizer
from unimodal_jax.train.state import init_state, state_shardings
from unimodal_jax.train.step import make_train_step
from tests.helpers import init_params, tiny_config
from unimodal_jax.models.decoder import Decoder

GROUPS = {
    "embeddings": {"pattern": r"embed_tokens/.*", "learning_rate": 1e-2},
    "first_layer": {"pattern": r"layers_0/.*", "frozen": True},
}


def _opt(groups=None, lr=1e-3, clip=0.0):
  return dict(learning_rate=lr, warmup_steps=0, schedule="constant", b1=0.9, b2=0.999, eps=1e-12,
              weight_decay=0.0, clip_grad_norm=clip, groups=groups or {})


def _setup(opt_cfg, accum=1, config=None):
  config = config or tiny_config()
  model = Decoder(config)
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  params = nn.meta.unbox(sharding.abstract_params(model, config))
  tx, schedules = optimizer.build(opt_cfg, params, total_steps=10)
  frozen = optimizer.frozen_mask(params, optimizer.parse_groups(opt_cfg["groups"]))
  _, shardings = state_shardings(model, config, tx, mesh)
  state = init_state(model, config, tx, 0, shardings)
  step = jax.jit(make_train_step(model, tx, frozen, schedules, grad_accum_steps=accum))
  return state, step, tx


def _batch(config, b=4, t=12, seed=0):
  rows = jax.random.randint(jax.random.key(seed), (b, t + 1), 0, config.vocab_size)
  return {"inputs": rows[:, :-1], "targets": rows[:, 1:], "target_mask": jnp.ones((b, t))}


def test_labels_and_errors():
  _, params = init_params(tiny_config())
  groups = optimizer.parse_groups(GROUPS)
  labels = optimizer.label_params(params, groups)
  assert labels["embed_tokens"]["embedding"] == "embeddings"
  assert labels["layers_0"]["mlp"]["up_proj"]["kernel"] == "first_layer"
  assert labels["layers_1"]["mlp"]["up_proj"]["kernel"] == "default"
  with pytest.raises(ValueError, match="optimizer.groups.vision.pattern 'adapter/.*' matches no"):
    optimizer.label_params(params, optimizer.parse_groups({"vision": {"pattern": "adapter/.*"}}))
  with pytest.raises(ValueError, match="optimizer.groups.x: unknown field"):
    optimizer.parse_groups({"x": {"pattern": ".*", "lr": 1.0}})
  with pytest.raises(ValueError, match="frozen groups take no learning_rate"):
    optimizer.parse_groups({"x": {"pattern": ".*", "frozen": True, "learning_rate": 1.0}})


def test_frozen_group_has_no_state_and_does_not_change():
  config = tiny_config()
  state, step, tx = _setup(_opt(GROUPS))
  # The frozen group's optimizer state holds no arrays at all.
  inner = state.opt_state.inner_states
  assert jax.tree.leaves(inner["first_layer"]) == []
  assert len(jax.tree.leaves(inner["embeddings"])) > 0
  before = jax.device_get(state.params)
  for seed in range(3):
    state, metrics = step(state, _batch(config, seed=seed))
  after = jax.device_get(state.params)
  jax.tree.map(np.testing.assert_array_equal, after["layers_0"], before["layers_0"])
  assert not np.array_equal(after["layers_1"]["mlp"]["up_proj"]["kernel"],
                            before["layers_1"]["mlp"]["up_proj"]["kernel"])


def test_per_group_learning_rates_are_what_the_config_says():
  """Adam's first step moves each parameter with a nonzero gradient by about its group's
  learning rate (m/sqrt(v) = sign(g) after bias correction)."""
  config = tiny_config()
  state, step, _ = _setup(_opt(GROUPS, lr=1e-3))
  before = jax.device_get(state.params)
  state, metrics = step(state, _batch(config))
  after = jax.device_get(state.params)
  assert float(metrics["lr/embeddings"]) == pytest.approx(1e-2)
  assert float(metrics["lr/default"]) == pytest.approx(1e-3)
  assert "lr/first_layer" not in metrics

  def moved(path):
    a, b = after, before
    for k in path:
      a, b = a[k], b[k]
    delta = np.abs(np.asarray(a) - np.asarray(b)).ravel()
    return delta[delta > 0]

  emb = moved(["embed_tokens", "embedding"])
  np.testing.assert_allclose(np.median(emb), 1e-2, rtol=1e-3)
  head = moved(["lm_head", "kernel"])
  np.testing.assert_allclose(np.median(head), 1e-3, rtol=1e-3)
  assert moved(["layers_0", "attn", "q_proj", "kernel"]).size == 0


def test_gradient_accumulation_equals_one_big_batch():
  config = tiny_config()
  batch = _batch(config, b=8)
  batch["target_mask"] = batch["target_mask"].at[0, :5].set(0.0)  # uneven weights per microbatch
  full_state, full_step, _ = _setup(_opt(clip=1.0))
  accum_state, accum_step, _ = _setup(_opt(clip=1.0), accum=4)
  full_state, full_m = full_step(full_state, batch)
  accum_state, accum_m = accum_step(accum_state, batch)
  np.testing.assert_allclose(accum_m["loss"], full_m["loss"], rtol=1e-6)
  np.testing.assert_allclose(accum_m["grad_norm"], full_m["grad_norm"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               accum_state.params, full_state.params)


def test_nonfinite_step_is_skipped_and_counted():
  config = tiny_config()
  state, step, _ = _setup(_opt())
  state, _ = step(state, _batch(config, seed=0))
  params1, opt1 = jax.device_get((state.params, state.opt_state))
  bad = _batch(config, seed=1)
  bad["target_mask"] = bad["target_mask"].at[2, 3].set(jnp.nan)
  for expected in (1, 2):
    state, metrics = step(state, bad)
    assert not bool(metrics["finite"])
    assert int(metrics["consecutive_nonfinite"]) == expected
  assert int(state.nonfinite_steps) == 2 and int(state.step) == 3
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), params1)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.opt_state), opt1)
  state, metrics = step(state, _batch(config, seed=2))
  assert bool(metrics["finite"]) and int(metrics["consecutive_nonfinite"]) == 0
  assert int(state.nonfinite_steps) == 2
  assert not np.array_equal(jax.device_get(state.params)["lm_head"]["kernel"],
                            params1["lm_head"]["kernel"])


def test_target_mask_excludes_tokens_from_the_loss():
  config = tiny_config()
  state, step, _ = _setup(_opt())
  batch = _batch(config)
  masked = dict(batch, target_mask=batch["target_mask"].at[:, :6].set(0.0))
  changed = dict(masked, targets=masked["targets"].at[:, :6].set(0))  # only masked targets differ
  _, m1 = step(jax.tree.map(jnp.copy, state), masked)
  _, m2 = step(jax.tree.map(jnp.copy, state), changed)
  assert float(m1["loss"]) == float(m2["loss"])
  assert float(m1["target_tokens"]) == 4 * 6


def test_schedules():
  cosine = optimizer.schedule(dict(warmup_steps=10, schedule="cosine", end_lr_ratio=0.1), 1.0, 100)
  assert float(cosine(0)) == 0.0 and float(cosine(10)) == pytest.approx(1.0)
  assert float(cosine(100)) == pytest.approx(0.1)
  constant = optimizer.schedule(dict(warmup_steps=4, schedule="constant"), 2.0, 100)
  assert float(constant(2)) == pytest.approx(1.0) and float(constant(50)) == 2.0
  with pytest.raises(ValueError, match="optimizer.schedule='linear'"):
    optimizer.schedule(dict(schedule="linear"), 1.0, 10)
