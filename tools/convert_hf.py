"""Convert a Hugging Face checkpoint into an orbax checkpoint of ours: a LLaMA/Vicuna or Qwen2
decoder, a CLIP / SigLIP vision tower (ILLUME's image encoder), or a diffusers Stable Diffusion
U-Net / VAE (or a whole SD pipeline directory: its unet/ and vae/).

    python tools/convert_hf.py --hf_dir DIR --out_dir OUT [--dtype keep|float32|bfloat16]

DIR holds config.json and model.safetensors (or model.safetensors.index.json with its shards);
config.json's model_type picks the converter: llama / qwen2 -> a decoder that
`unimodal_jax.load_pretrained(OUT)` reads; clip, clip_vision_model, siglip, siglip_vision_model ->
the vision tower (a full CLIPModel/SiglipModel keeps only its vision half) that
`unimodal_jax.hf_clip.load_vit(OUT)` reads. A config.json whose `_class_name` is
UNet2DConditionModel or AutoencoderKL (weights: diffusion_pytorch_model.safetensors, single or
sharded) converts to a U-Net or VAE that `load_pretrained(OUT)` reads; a pipeline directory
(model_index.json, unet/, vae/, scheduler/) converts into OUT/unet and OUT/vae. OUT becomes an
orbax CheckpointManager directory (step 0: params + model config). Tensors stream from memory maps of the safetensors files, so
with --dtype keep (the default) RAM stays far below the model's size. --check_logits compares
with transformers or diffusers afterwards (logits for a decoder, hidden states for a vision
tower, the prediction of a U-Net, the encoder mean and decoded images of a VAE).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--hf_dir", required=True, help="Hugging Face model directory (config.json + safetensors)")
  p.add_argument("--out_dir", required=True, help="output checkpoint directory (must not hold a checkpoint yet)")
  p.add_argument("--dtype", default="keep", choices=["keep", "float32", "bfloat16"],
                 help="storage dtype of the params: 'keep' the file's (streams, no copy); a cast "
                      "materializes the model in RAM. The model's param_dtype is set by "
                      "--param_dtype and applied when loading.")
  p.add_argument("--param_dtype", default="float32", choices=["float32", "bfloat16"],
                 help="param dtype recorded in the model config (what load_pretrained casts to)")
  p.add_argument("--compute_dtype", default="float32", choices=["float32", "bfloat16"],
                 help="compute dtype recorded in the model config (bfloat16 on accelerators)")
  p.add_argument("--check_logits", action="store_true",
                 help="after converting, run the Hugging Face model (needs torch + transformers "
                      "and RAM for it in float32) and ours on the same random tokens (or random "
                      "images for a vision tower); fail unless max |logit difference| (hidden-"
                      "state difference) <= --tolerance")
  p.add_argument("--tolerance", type=float, default=1e-4,
                 help="largest max |logit difference| --check_logits accepts (float32)")
  p.add_argument("--concurrent_gb", type=float, default=1.0,
                 help="at most this many GB of tensors are being written at once (bounds RAM)")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from unimodal_jax import checkpoints, hf_decoder

  from unimodal_jax import hf_diffusers

  config_path = os.path.join(args.hf_dir, "config.json")
  pipeline = not os.path.exists(config_path) and hf_diffusers.is_pipeline(args.hf_dir)
  if not os.path.exists(config_path) and not pipeline:
    print(f"error: {config_path} not found (and {args.hf_dir} is not a diffusers pipeline "
          "directory with unet/ and vae/)", file=sys.stderr)
    return 2
  if os.path.isdir(args.out_dir) and os.listdir(args.out_dir):
    print(f"error: --out_dir {args.out_dir} is not empty; choose a new directory", file=sys.stderr)
    return 2
  start = time.time()
  if pipeline:
    return convert_diffusers(args, start, pipeline=True)
  with open(config_path) as f:
    hf_config = json.load(f)
  if hf_config.get("_class_name") in (hf_diffusers.UNET_CLASS, hf_diffusers.VAE_CLASS):
    return convert_diffusers(args, start, pipeline=False)
  if hf_config.get("model_type") in VISION_MODEL_TYPES:
    return convert_vision(args, start)
  config = hf_decoder.config_from_hf(hf_config, where=config_path, param_dtype=args.param_dtype,
                                     dtype=args.compute_dtype)
  reader = hf_decoder.SafetensorsDir(args.hf_dir)
  dtype = None if args.dtype == "keep" else args.dtype
  params = hf_decoder.params_from_hf(reader, config, dtype=dtype)
  print(f"converting {config.family}: {config.num_layers} layers, hidden {config.hidden_size}, "
        f"{config.num_params() / 1e6:.1f}M params -> {args.out_dir}", flush=True)
  checkpoints.save_pretrained(args.out_dir, params, config, concurrent_gb=args.concurrent_gb)
  print(f"done in {time.time() - start:.1f}s", flush=True)
  if args.check_logits:
    diff = logit_difference(args.hf_dir, args.out_dir)
    ok = diff <= args.tolerance
    print(f"logit check: max |ours - transformers| = {diff:.3g} "
          f"({'ok' if ok else 'FAILED'}, tolerance {args.tolerance:g})", flush=True)
    return 0 if ok else 1
  return 0


VISION_MODEL_TYPES = ("clip", "clip_vision_model", "siglip", "siglip_vision_model")


def convert_vision(args, start: float) -> int:
  from unimodal_jax import hf_clip

  cfg = hf_clip.convert_clip_vision(args.hf_dir, args.out_dir, dtype=args.dtype,
                                    param_dtype=args.param_dtype,
                                    compute_dtype=args.compute_dtype,
                                    concurrent_gb=args.concurrent_gb)
  print(f"converted vision tower: {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
        f"{cfg.image_size} px in patches of {cfg.patch_size}, pooling {cfg.pooling!r}, "
        f"{cfg.num_params() / 1e6:.1f}M params -> {args.out_dir} in {time.time() - start:.1f}s",
        flush=True)
  if args.check_logits:
    diff = hf_clip.max_difference(args.hf_dir, args.out_dir)
    worst = max(diff.values())
    ok = worst <= args.tolerance
    print(f"hidden-state check: max |ours - transformers| = "
          + ", ".join(f"{k} {v:.3g}" for k, v in diff.items())
          + f" ({'ok' if ok else 'FAILED'}, tolerance {args.tolerance:g})", flush=True)
    return 0 if ok else 1
  return 0


def convert_diffusers(args, start: float, *, pipeline: bool) -> int:
  """A diffusers U-Net or VAE directory, or a whole SD pipeline directory (unet/ and vae/)."""
  from unimodal_jax import hf_diffusers

  kwargs = dict(dtype=args.dtype, param_dtype=args.param_dtype, compute_dtype=args.compute_dtype,
                concurrent_gb=args.concurrent_gb)
  try:
    if pipeline:
      configs = hf_diffusers.convert_pipeline(args.hf_dir, args.out_dir, **kwargs)
      parts = {part: (os.path.join(args.hf_dir, part), os.path.join(args.out_dir, part))
               for part in configs}
    else:
      configs = {"model": hf_diffusers.convert(args.hf_dir, args.out_dir, **kwargs)}
      parts = {"model": (args.hf_dir, args.out_dir)}
  except (ValueError, KeyError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for part, config in configs.items():
    print(f"converted {part}: {config.KIND}, channels {list(config.block_out_channels)} -> "
          f"{parts[part][1]}", flush=True)
  print(f"done in {time.time() - start:.1f}s", flush=True)
  if args.check_logits:
    ok = True
    for part, (hf_dir, out_dir) in parts.items():
      diff = hf_diffusers.max_difference(hf_dir, out_dir)
      scale = diff.pop("scale")
      worst = max(diff.values())
      # A U-Net's or VAE's outputs are not logits: the bound is relative to the output's scale.
      good = worst <= args.tolerance * max(scale, 1.0)
      ok &= good
      print(f"{part} check: max |ours - diffusers| = "
            + ", ".join(f"{k} {v:.3g}" for k, v in diff.items())
            + f" (output scale {scale:.3g}; {'ok' if good else 'FAILED'}, tolerance "
              f"{args.tolerance:g} x scale)", flush=True)
    return 0 if ok else 1
  return 0


def logit_difference(hf_dir: str, ckpt_dir: str, batch: int = 2, length: int = 16) -> float:
  """Max |logits| difference between transformers' model in hf_dir and our checkpoint."""
  import numpy as np
  import torch
  import transformers
  from unimodal_jax import checkpoints

  model, params = checkpoints.load_pretrained(ckpt_dir)
  tokens = np.random.RandomState(0).randint(0, model.config.vocab_size, (batch, length))
  ours = np.asarray(model.apply({"params": params}, tokens))
  del params
  hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
  with torch.no_grad():
    ref = hf(torch.tensor(tokens)).logits.numpy()
  return float(np.abs(ours - ref).max())


if __name__ == "__main__":
  sys.exit(main())
