"""The project's DreamLLM train step against the same model in PyTorch (transformers' LLaMA, a
dream-query parameter and a bias-free projector, diffusers' U-Net) on the same machine, config
and batch: stage II's step, the LLM and the queries trained, the U-Net frozen, one forward for
both losses.

    python tools/bench_dreamllm.py [--batch 4 --seq_len 256 --hidden 256 --layers 4 --heads 8
                                    --mlp 704 --vocab 8192] [--queries 16 --images_per_row 2
                                    --sample_size 32 --channels 32,64 --cross_attention_dim 128]
                                   [--steps 3 --repeats 5]

Each row holds `images_per_row` text-to-image examples: a caption, <dream_start>, the query
slots, <dream_end>. Both sides: float32, AdamW over the LLM, the queries and the projector (the
U-Net frozen: no weight gradient, no optimizer state), loss = LM cross entropy over the caption
tokens + 10 x the epsilon MSE of the U-Net conditioned on the projected query states (pixels,
no VAE, as the tiny main job draws). The sides are timed alternately (`--repeats` rounds of
`--steps` steps after a warm-up) and the medians compared. The comparison is of time only: the
two start from different random weights. Prints one JSON line: tokens_per_s,
torch_tokens_per_s, ratio_vs_torch, step_seconds_median, config.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_model_args  # noqa: E402  (beside this file)
from bench_unet import _ints, hf_config  # noqa: E402


def _args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--seq_len", type=int, default=256)
  bench_model_args.add_model_args(p)
  p.add_argument("--queries", type=int, default=16)
  p.add_argument("--images_per_row", type=int, default=2)
  p.add_argument("--sample_size", type=int, default=32, help="pixels drawn, height = width")
  p.add_argument("--channels", type=_ints, default=(32, 64))
  p.add_argument("--unet_heads", type=int, default=2)
  p.add_argument("--cross_attention_dim", type=int, default=128)
  p.add_argument("--steps", type=int, default=3, help="steps per timed round")
  p.add_argument("--repeats", type=int, default=5, help="timed rounds per side")
  return p.parse_args(argv)


def model_config(a):
  """The DreamLLM config both sides build: the decoder of --hidden etc. (its last 7 ids the
  special tokens), a two-level U-Net on pixels; a token ViT (unused: no image is read)."""
  from unimodal_jax.models import dreamllm, unet, vit
  llm = bench_model_args.decoder_config(a, a.seq_len)
  n = len(a.channels)
  return dreamllm.DreamLLMConfig(
      llm=llm.replace(vocab_size=a.vocab), vision=vit.VitConfig(
          image_size=16, patch_size=8, hidden_size=32, intermediate_size=64, num_layers=1,
          num_heads=2),
      unet=unet.UNetConfig(
          sample_size=a.sample_size, in_channels=3, out_channels=3,
          block_out_channels=a.channels,
          down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
          up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
          layers_per_block=1, num_attention_heads=a.unet_heads,
          cross_attention_dim=a.cross_attention_dim, condition_length=a.queries),
      num_dream_queries=a.queries, dream_image_size=a.sample_size)


def make_batch(a, cfg):
  """Rows of `images_per_row` examples: BOS caption <dream_start> queries <dream_end>; targets
  the caption and <dream_start>; plus the images, noise and timesteps (numpy)."""
  import numpy as np
  v = cfg.vocab
  rng = np.random.default_rng(0)
  per = a.seq_len // a.images_per_row
  caption = per - a.queries - 3
  if caption < 2:
    raise SystemExit(f"--seq_len {a.seq_len} leaves no caption for {a.images_per_row} images "
                     f"of {a.queries} queries per row")
  rows = []
  for _ in range(a.batch):
    row = []
    for _ in range(a.images_per_row):
      row += ([v.bos_id] + list(rng.integers(4, v.text_size, caption)) + [v.dream_start]
              + [v.dream_query] * a.queries + [v.dream_end])
    rows.append(row + [v.eos_id] * (a.seq_len + 1 - len(row)))
  tokens = np.asarray(rows, np.int32)
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  mask = ((targets < v.text_size) | (targets == v.dream_start)).astype(np.float32)
  m, s = a.images_per_row, a.sample_size
  return {"inputs": inputs, "targets": targets, "target_mask": mask,
          "dream_images": rng.integers(0, 256, (a.batch, m, s, s, 3)).astype(np.uint8),
          "dream_image_segment_ids": np.ones((a.batch, m), np.int32),
          "noise": rng.standard_normal((a.batch * m, s, s, 3)).astype(np.float32),
          "timesteps": rng.integers(0, 1000, (a.batch * m,)).astype(np.int32)}


def jax_runner(a, cfg, batch):
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from unimodal_jax.models import dreamllm
  from unimodal_jax.train import optimizer
  from unimodal_jax.train.state import TrainState
  from unimodal_jax.train.step import make_train_step
  model = dreamllm.DreamLLM(cfg)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0),
                                             jnp.zeros((1, 8), jnp.int32)))["params"]
  groups = {part: ({"pattern": pat, "frozen": True} if part in ("unet", "vision_encoder",
                                                                   "vision_projector")
                   else {"pattern": pat, "learning_rate": 1e-4})
            for part, pat in dreamllm.GROUP_PATTERNS.items() if part != "vae"}
  opt = {"learning_rate": 1e-4, "warmup_steps": 0, "schedule": "constant", "b1": 0.9,
         "b2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "clip_grad_norm": 0.0, "groups": groups}
  tx, schedules = optimizer.build(opt, params, 1000)
  frozen = optimizer.frozen_mask(params, optimizer.parse_groups(groups))
  zero = lambda: jnp.zeros((), jnp.int32)
  state = TrainState(step=zero(), params=params, opt_state=tx.init(params),
                     rng=jnp.zeros((2,), jnp.uint32), nonfinite_steps=zero(),
                     consecutive_nonfinite=zero())
  step = jax.jit(make_train_step(model, tx, frozen, schedules, diffusion_loss_weight=10.0),
                 donate_argnums=(0,))
  fields = ("inputs", "targets", "target_mask", "dream_images", "dream_image_segment_ids")
  jbatch = {k: jnp.asarray(batch[k]) for k in fields}
  holder = [state]

  def run():
    holder[0], metrics = step(holder[0], jbatch)
    jax.block_until_ready(metrics["loss"])
    return float(metrics["loss"])
  return run


def torch_runner(a, cfg, batch):
  import diffusers
  import torch
  import transformers
  torch.manual_seed(0)
  v, e, q = cfg.vocab, a.hidden, a.queries
  llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=a.vocab, hidden_size=e, intermediate_size=a.mlp, num_hidden_layers=a.layers,
      num_attention_heads=a.heads, num_key_value_heads=a.kv_heads or a.heads,
      max_position_embeddings=a.seq_len, rms_norm_eps=1e-6, tie_word_embeddings=False,
      attn_implementation="sdpa")).float().train()
  queries = torch.nn.Parameter(torch.randn(q, e) * 0.02)
  projector = torch.nn.Linear(e, a.cross_attention_dim, bias=False)
  unet_args = argparse.Namespace(sample_size=a.sample_size, latent_channels=3,
                                 layers_per_block=1, channels=a.channels,
                                 heads=(a.unet_heads,) * len(a.channels),
                                 cross_attention_dim=a.cross_attention_dim, norm_groups=32)
  unet = diffusers.UNet2DConditionModel(**hf_config(unet_args)).float().train()
  unet.requires_grad_(False)
  scheduler = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                      beta_end=0.012)
  opt = torch.optim.AdamW(list(llama.parameters()) + [queries] + list(projector.parameters()),
                          lr=1e-4, weight_decay=0.0)
  ids = torch.from_numpy(batch["inputs"].astype("int64"))
  targets = torch.from_numpy(batch["targets"].astype("int64"))
  mask = torch.from_numpy(batch["target_mask"])
  is_query = ids == v.dream_query
  slot = (torch.cumsum(is_query.long(), 1) - 1) % q
  images = torch.from_numpy(batch["dream_images"]).float().div(127.5).sub(1.0)
  x0 = images.reshape(-1, a.sample_size, a.sample_size, 3).permute(0, 3, 1, 2).contiguous()
  noise = torch.from_numpy(batch["noise"]).permute(0, 3, 1, 2).contiguous()
  t = torch.from_numpy(batch["timesteps"].astype("int64"))
  noisy = scheduler.add_noise(x0, noise, t)

  def run():
    embeds = llama.model.embed_tokens(ids)
    embeds = torch.where(is_query[..., None], queries[slot], embeds)
    hidden = llama.model(inputs_embeds=embeds).last_hidden_state
    logits = llama.lm_head(hidden)
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           targets.reshape(-1), reduction="none")
    lm = (ce * mask.reshape(-1)).sum() / mask.sum()
    states = hidden[is_query].reshape(-1, q, e)  # row-major: each image's queries in order
    pred = unet(noisy, t, encoder_hidden_states=projector(states)).sample
    loss = lm + 10.0 * torch.nn.functional.mse_loss(pred, noise)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())
  return run


def main(argv=None):
  a = _args(argv)
  cfg = model_config(a)
  batch = make_batch(a, cfg)
  sides = {"ours": jax_runner(a, cfg, batch), "torch": torch_runner(a, cfg, batch)}
  tokens = a.batch * a.seq_len
  times = bench_model_args.time_alternately(sides, a.repeats, a.steps, tokens)
  rate = {k: tokens / statistics.median(v) for k, v in times.items()}
  import torch
  print(json.dumps({
      "tokens_per_s": round(rate["ours"], 1),
      "torch_tokens_per_s": round(rate["torch"], 1),
      "ratio_vs_torch": round(rate["ours"] / rate["torch"], 3),
      "step_seconds_median": {k: round(statistics.median(v), 4) for k, v in times.items()},
      "torch_threads": torch.get_num_threads(),
      "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(a).items()}}))


if __name__ == "__main__":
  main()
