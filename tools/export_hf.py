"""Export one of our decoder, U-Net or VAE checkpoints back to the Hugging Face layout.

    python tools/export_hf.py --ckpt OUT --hf_dir DIR2 [--step N] [--dtype float32|bfloat16]
                              [--max_shard_gb 5]

OUT is a converted checkpoint or a training workdir (latest step unless --step). DIR2 receives
config.json and model.safetensors (or numbered shards with model.safetensors.index.json), readable
by `transformers.AutoModelForCausalLM.from_pretrained(DIR2)`; for a U-Net or VAE,
config.json and diffusion_pytorch_model.safetensors, readable by diffusers'
`UNet2DConditionModel.from_pretrained(DIR2)` / `AutoencoderKL.from_pretrained(DIR2)`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--ckpt", required=True, help="our checkpoint directory or training workdir")
  p.add_argument("--hf_dir", required=True, help="output directory for the Hugging Face files")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                 help="dtype of the written tensors (default: the model's param_dtype)")
  p.add_argument("--max_shard_gb", type=float, default=5.0, help="largest safetensors shard, in GB")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import numpy as np
  import ml_dtypes
  from safetensors.numpy import save_file
  from unimodal_jax import checkpoints, hf_decoder

  kind = checkpoints.read_model_config(
      checkpoints.resolve_model_directory(args.ckpt), args.step).get("kind", "decoder")
  if kind in ("unet", "vae"):
    return export_diffusers(args)
  model, params = checkpoints.load_pretrained(args.ckpt, step=args.step,
                                              config_overrides={"scan_layers": False})
  config = model.config
  dtype_name = args.dtype or config.param_dtype
  np_dtype = ml_dtypes.bfloat16 if dtype_name == "bfloat16" else np.float32
  os.makedirs(args.hf_dir, exist_ok=True)

  max_bytes = int(args.max_shard_gb * 1e9)
  shards: list[dict] = [{}]
  size = 0
  for name, array in hf_decoder.params_to_hf(params, config):
    array = array.astype(np_dtype)
    if shards[-1] and size + array.nbytes > max_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = array
    size += array.nbytes

  weight_map = {}
  for i, shard in enumerate(shards):
    name = ("model.safetensors" if len(shards) == 1
            else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors")
    save_file(shard, os.path.join(args.hf_dir, name), metadata={"format": "pt"})
    weight_map.update({k: name for k in shard})
    print(f"wrote {name} ({len(shard)} tensors)", flush=True)
  if len(shards) > 1:
    total = sum(a.nbytes for s in shards for a in s.values())
    with open(os.path.join(args.hf_dir, "model.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  with open(os.path.join(args.hf_dir, "config.json"), "w") as f:
    json.dump(hf_decoder.config_to_hf(config, dtype_name), f, indent=2)
  print(f"exported {config.family} to {args.hf_dir}", flush=True)
  return 0


def export_diffusers(args) -> int:
  """A U-Net or VAE checkpoint -> config.json + diffusion_pytorch_model.safetensors, which
  diffusers' `UNet2DConditionModel` / `AutoencoderKL.from_pretrained(DIR2)` reads."""
  import numpy as np
  import ml_dtypes
  from safetensors.numpy import save_file
  from unimodal_jax import checkpoints, hf_diffusers

  model, params = checkpoints.load_pretrained(args.ckpt, step=args.step)
  dtype_name = args.dtype or model.config.param_dtype
  np_dtype = ml_dtypes.bfloat16 if dtype_name == "bfloat16" else np.float32
  tensors = {name: np.ascontiguousarray(array.astype(np_dtype))
             for name, array in hf_diffusers.params_to_diffusers(params)}
  os.makedirs(args.hf_dir, exist_ok=True)
  save_file(tensors, os.path.join(args.hf_dir, f"{hf_diffusers.WEIGHTS}.safetensors"),
            metadata={"format": "pt"})
  with open(os.path.join(args.hf_dir, "config.json"), "w") as f:
    json.dump(hf_diffusers.config_to_diffusers(model.config), f, indent=2)
  print(f"exported {model.config.KIND} ({len(tensors)} tensors) to {args.hf_dir}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
