"""Next-token losses with target masks, optional z-loss, reported per modality.

A batch is a dict of [batch, length] arrays: `inputs` (token ids), `targets` (next token ids),
`target_mask` (float weights: 1 counts, 0 does not, e.g. prompt tokens), optionally
`segment_ids`, `positions` and `target_modality` (int id per target, see MODALITIES).

Losses are kept as sums over target tokens so that gradient-accumulation microbatches add up
exactly to the full batch; `summarize` turns the sums into means.

A model that also draws (DreamLLM) adds its own sums: `diffusion` (the drawn images' diffusion
losses) and `diffusion_images` (their count). The objective is then
lm_weight * CE per target token + diffusion_weight * diffusion loss per drawn image, each part
reported apart (loss/lm, loss/diffusion).
"""
from __future__ import annotations

import jax.numpy as jnp

from unimodal_jax.train.cross_entropy import cross_entropy_lse_and_correct

MODALITIES = ("text", "image")


def loss_sums(logits, batch, z_loss_weight: float = 0.0) -> dict:
  """Weighted sums over the targets: weight, ce, z (logsumexp^2), correct; per modality too."""
  logits = logits.astype(jnp.float32)
  targets = batch["targets"]
  mask = batch.get("target_mask")
  mask = jnp.ones(targets.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
  ce, lse, correct = cross_entropy_lse_and_correct(logits, targets)
  sums = {
      "weight": jnp.sum(mask),
      "ce": jnp.sum(ce * mask),
      "correct": jnp.sum(correct * mask),
  }
  if z_loss_weight:
    sums["z"] = jnp.sum(lse * lse * mask)
  if "target_modality" in batch:
    for i, name in enumerate(MODALITIES):
      modality_mask = mask * (batch["target_modality"] == i)
      sums[f"weight/{name}"] = jnp.sum(modality_mask)
      sums[f"ce/{name}"] = jnp.sum(ce * modality_mask)
  return sums


def objective(sums: dict, total_weight, z_loss_weight: float = 0.0, *, lm_weight: float = 1.0,
              diffusion_weight: float = 1.0, total_dream_images=None):
  """The loss to differentiate: (ce + z_loss_weight * z) / total_weight of the whole batch;
  with diffusion sums, lm_weight times that plus diffusion_weight times the diffusion loss per
  drawn image of the whole batch (total_dream_images)."""
  value = sums["ce"] + (z_loss_weight * sums["z"] if z_loss_weight else 0.0)
  lm = value / jnp.maximum(total_weight, 1e-9)
  if "diffusion" not in sums:
    return lm
  images = sums["diffusion_images"] if total_dream_images is None else total_dream_images
  return lm_weight * lm + diffusion_weight * sums["diffusion"] / jnp.maximum(images, 1.0)


def _mean(total, weight):
  return jnp.where(weight > 0, total / jnp.maximum(weight, 1e-9), 0.0)


def summarize(sums: dict, z_loss_weight: float = 0.0, *, lm_weight: float = 1.0,
              diffusion_weight: float = 1.0) -> dict:
  """Means from sums: loss (cross entropy), accuracy, z_loss, loss/<modality>, target_tokens;
  with diffusion sums also loss/lm (cross entropy), loss/diffusion (per drawn image),
  drawn_images, and loss is their weighted sum (the objective)."""
  out = {"loss": _mean(sums["ce"], sums["weight"]),
         "accuracy": _mean(sums["correct"], sums["weight"]),
         "target_tokens": sums["weight"]}
  if "diffusion" in sums:
    out["loss/lm"] = out["loss"]
    out["loss/diffusion"] = _mean(sums["diffusion"], sums["diffusion_images"])
    out["drawn_images"] = sums["diffusion_images"]
    out["loss"] = lm_weight * out["loss/lm"] + diffusion_weight * out["loss/diffusion"]
  if "z" in sums:
    out["z_loss"] = z_loss_weight * _mean(sums["z"], sums["weight"])
  for name in MODALITIES:
    if f"ce/{name}" in sums:
      out[f"loss/{name}"] = _mean(sums[f"ce/{name}"], sums[f"weight/{name}"])
  return out
