"""Print a model config's summary and prove the model runs: parameters per module, FLOPs per
token, how each weight is sharded on this machine's mesh, and a jitted forward pass.

    python -m unimodal_jax.summary --config=experiments/tiny/lm.py [--config.model.num_layers=8]
"""
import os
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file")
_FORWARD = flags.DEFINE_bool("forward", True, "run a forward pass on random tokens")


def _human(n: float) -> str:
  for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
    if n >= div:
      return f"{n / div:.2f}{unit}"
  return str(int(n))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=experiments/tiny/lm.py")
  import jax
  import numpy as np
  from flax import linen as nn
  from unimodal_jax import sharding
  from unimodal_jax.models import build

  cfg = _CONFIG.value
  config = build.config_from_dict(cfg.model.to_dict())
  model = build.build(config)
  mesh = sharding.make_mesh(cfg.get("mesh", {"data": -1}))
  boxed = sharding.abstract_params(model, config)
  shardings = sharding.param_shardings(boxed, mesh)
  shapes = nn.meta.unbox(boxed)
  llm = build.llm_config(config)
  decoder = hasattr(llm, "num_kv_heads")  # a decoder, alone or inside ILLUME

  print(f"config      {config_flags.get_config_filename(flags.FLAGS['config'])}")
  print(f"kind        {config.KIND}")
  if decoder:
    print(f"llm         {llm.family}: {llm.num_layers} layers, hidden {llm.hidden_size}, "
          f"heads {llm.num_heads} (kv {llm.num_kv_heads}) x {llm.head_dim}, "
          f"mlp {llm.intermediate_size}, vocab {llm.vocab_size}")
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  print(f"params      {_human(count)} ({getattr(llm, 'param_dtype', 'float32')}, compute "
        f"{getattr(llm, 'dtype', 'float32')})")
  if decoder and "seq_len" in cfg:
    print(f"flops/token {_human(config.flops_per_token(cfg.seq_len))} (train, seq {cfg.seq_len})")
  print(f"mesh        {dict(mesh.shape)} on {len(mesh.devices.flat)} {jax.devices()[0].platform} "
        "device(s)")
  print(f"{'parameter':<42} {'shape':<20} {'sharding':<28} count")
  for (path, leaf), sh in zip(jax.tree_util.tree_flatten_with_path(shapes)[0],
                              jax.tree.leaves(shardings)):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    print(f"{name:<42} {str(tuple(leaf.shape)):<20} {str(tuple(sh.spec)):<28} "
          f"{_human(int(np.prod(leaf.shape)))}")

  if _FORWARD.value and not decoder:
    print("forward     skipped: --forward times a decoder's forward pass on random tokens")
  elif _FORWARD.value:
    batch = max(cfg.global_batch, 1)
    tokens = jax.random.randint(jax.random.key(0), (batch, cfg.seq_len), 0, config.vocab_size)
    params = jax.jit(lambda t: nn.meta.unbox(model.init(jax.random.key(0), t)["params"]),
                     out_shardings=shardings)(tokens[:1, :8])
    forward = jax.jit(lambda p, t: model.apply({"params": p}, t))
    tokens = jax.device_put(tokens, sharding.batch_sharding(mesh))
    with sharding.activation_sharding(mesh):
      logits = forward(params, tokens).block_until_ready()
      start = time.perf_counter()
      logits = forward(params, tokens).block_until_ready()
    elapsed = time.perf_counter() - start
    import optax
    loss = float(optax.softmax_cross_entropy_with_integer_labels(
        logits[:, :-1], tokens[:, 1:]).mean())
    print(f"forward     logits {tuple(logits.shape)} in {elapsed * 1e3:.1f} ms "
          f"({batch * cfg.seq_len / elapsed:,.0f} tokens/s); next-token loss on random tokens "
          f"{loss:.3f} (untrained: about ln(vocab) = {np.log(config.vocab_size):.3f})")


if __name__ == "__main__":
  from unimodal_jax.config_path import add_experiments_root
  add_experiments_root()  # configs import experiments.*
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  app.run(main)
