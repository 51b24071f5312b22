"""Mesh construction, the rules table, and sharded forward passes on 8 virtual CPU devices."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from unimodal_jax import sharding
from unimodal_jax.checkpoints import save_pretrained, load_pretrained
from tests.helpers import init_params, tiny_config


def test_eight_virtual_devices():
  assert len(jax.devices()) == 8, "conftest should give 8 CPU devices"


def test_resolve_mesh_shape():
  assert sharding.resolve_mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 8) == (2, 2, 2)
  assert sharding.resolve_mesh_shape({"data": -1}, 8) == (8, 1, 1)
  with pytest.raises(ValueError, match="needs 16 devices, but there are 8"):
    sharding.resolve_mesh_shape({"data": 4, "fsdp": 4}, 8)
  with pytest.raises(ValueError, match="only one axis may be -1"):
    sharding.resolve_mesh_shape({"data": -1, "fsdp": -1}, 8)
  with pytest.raises(ValueError, match="unknown axis"):
    sharding.resolve_mesh_shape({"model": 2}, 8)
  with pytest.raises(ValueError, match="cannot be split"):
    sharding.resolve_mesh_shape({"data": 3, "fsdp": -1}, 8)


def _sharded_params(config, mesh):
  model, params = init_params(config)
  shardings = sharding.param_shardings(sharding.abstract_params(model, config), mesh)
  return model, params, shardings, jax.device_put(params, shardings)


@pytest.mark.parametrize("scan", [pytest.param(False, marks=pytest.mark.slow), True])
def test_forward_on_2x2x2_mesh_equals_single_device(scan):
  config = tiny_config(num_heads=8, num_kv_heads=4, head_dim=8, hidden_size=64,
                       intermediate_size=96, vocab_size=128, scan_layers=scan)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  model, params, shardings, sharded = _sharded_params(config, mesh)
  tokens = jax.random.randint(jax.random.key(0), (4, 12), 0, config.vocab_size)
  expected = jax.jit(lambda p, t: model.apply({"params": p}, t))(params, tokens)

  forward = jax.jit(lambda p, t: model.apply({"params": p}, t),
                    in_shardings=(shardings, sharding.batch_sharding(mesh)),
                    out_shardings=sharding.batch_sharding(mesh, 3))
  with sharding.activation_sharding(mesh):
    got = forward(sharded, jax.device_put(tokens, sharding.batch_sharding(mesh)))
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)
  assert got.sharding.spec == P(("data", "fsdp"), None, None)

  # Each big weight is sharded the way the rules say, on the arrays themselves.
  layer = sharded["layers"] if scan else sharded["layers_0"]
  lead = (None,) if scan else ()
  expect = {
      "embed": (sharded["embed_tokens"]["embedding"], P("tensor", "fsdp")),
      "lm_head": (sharded["lm_head"]["kernel"], P("fsdp", "tensor")),
      "q_proj": (layer["attn"]["q_proj"]["kernel"], P(*lead, "fsdp", "tensor", None)),
      "k_proj": (layer["attn"]["k_proj"]["kernel"], P(*lead, "fsdp", "tensor", None)),
      "o_proj": (layer["attn"]["o_proj"]["kernel"], P(*lead, "tensor", None, "fsdp")),
      "gate": (layer["mlp"]["gate_proj"]["kernel"], P(*lead, "fsdp", "tensor")),
      "down": (layer["mlp"]["down_proj"]["kernel"], P(*lead, "tensor", "fsdp")),
      "norm": (layer["input_norm"]["scale"], P(*lead, None)),
  }
  for name, (array, spec) in expect.items():
    assert array.sharding.spec == spec, name
    # and the shards really are split: each device holds 1/(fsdp*tensor) of a 2-D weight
  emb = sharded["embed_tokens"]["embedding"]
  assert emb.addressable_shards[0].data.shape == (config.vocab_size // 2, config.hidden_size // 2)


def test_activation_constraints_apply_inside_jit():
  """The logits' logical constraint (act_batch, act_length, act_vocab) decides their sharding
  within `activation_sharding`; outside it the compiler is left to choose."""
  config = tiny_config(num_heads=8, num_kv_heads=4, head_dim=8, hidden_size=64,
                       intermediate_size=96, vocab_size=128)
  mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
  model, params, shardings, sharded = _sharded_params(config, mesh)
  tokens = jax.ShapeDtypeStruct((2, 8), jnp.int32)  # (made outside the context: see README)
  forward = jax.jit(lambda p, t: model.apply({"params": p}, t),
                    in_shardings=(shardings, sharding.batch_sharding(mesh)))
  with sharding.activation_sharding(mesh):
    constrained = forward.lower(sharded, tokens).compile().output_shardings
  free = forward.lower(sharded, tokens).compile().output_shardings
  assert constrained.spec == P("fsdp", None, "tensor")
  assert free.spec != constrained.spec


def test_indivisible_dimension_is_replicated_not_an_error(caplog):
  config = tiny_config(num_heads=6, num_kv_heads=2)  # 2 kv heads over tensor=4
  mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
  model, params, shardings, sharded = _sharded_params(config, mesh)
  spec = shardings["layers_0"]["attn"]["k_proj"]["kernel"].spec
  assert spec == P("fsdp", None, None)
  assert "not divisible by mesh axis 'tensor'" in caplog.text
  tokens = jnp.ones((2, 5), jnp.int32)
  with sharding.activation_sharding(mesh):
    got = jax.jit(lambda p, t: model.apply({"params": p}, t))(sharded, tokens)
  np.testing.assert_allclose(got, model.apply({"params": params}, tokens), atol=1e-5)


def test_check_batch_divisible_names_the_field():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  sharding.check_batch_divisible(8, mesh)
  with pytest.raises(ValueError, match="global_batch=6 is not divisible"):
    sharding.check_batch_divisible(6, mesh, "global_batch")


def test_load_pretrained_onto_a_mesh(tmp_path):
  config = tiny_config(vocab_size=128, hidden_size=64, num_heads=8, num_kv_heads=4,
                       intermediate_size=96)
  model, params = init_params(config)
  save_pretrained(str(tmp_path / "ckpt"), jax.tree.map(np.asarray, params), config)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
  loaded_model, loaded = load_pretrained(str(tmp_path / "ckpt"), mesh=mesh,
                                         config_overrides={"scan_layers": True})
  q = loaded["layers"]["attn"]["q_proj"]["kernel"]
  assert q.sharding.spec == P(None, "fsdp", "tensor", None)
  tokens = jnp.arange(16, dtype=jnp.int32).reshape(2, 8)
  np.testing.assert_allclose(loaded_model.apply({"params": loaded}, tokens),
                             model.apply({"params": params}, tokens), atol=1e-5)
