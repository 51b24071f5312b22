"""Stable Diffusion weights in and out: diffusers' UNet2DConditionModel and AutoencoderKL.

    config = config_from_diffusers(json.load(open("unet/config.json")))   # UNetConfig / VAEConfig
    params = params_from_diffusers(SafetensorsDir(d, "diffusion_pytorch_model"), config)
    for name, array in params_to_diffusers(params): ...                   # export
    config_to_diffusers(config)                                           # its config.json

Our modules carry diffusers' names, so a tensor's path is its name with each numeric index joined
to the name before it (`down_blocks.0.resnets.1.conv1.weight` -> down_blocks_0/resnets_1/conv1/
kernel). Conv weights [O, I, kh, kw] become [kh, kw, I, O], linear [O, I] becomes [I, O], a
norm's weight its scale. Old VAE files name the mid-block attention query/key/value/proj_attn
(sometimes as 1x1 convs); they are read under the current names. A config field we do not
implement, at a value other than its default, is refused by name: a model that would compute
something else must not load silently.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterator

import jax
import numpy as np

from unimodal_jax.models.unet import UNetConfig
from unimodal_jax.models.vae import VAEConfig

UNET_CLASS, VAE_CLASS = "UNet2DConditionModel", "AutoencoderKL"
WEIGHTS = "diffusion_pytorch_model"

# diffusers field -> the only value we implement (a field at another value is refused).
_UNET_FIXED = {
    "center_input_sample": False, "mid_block_type": "UNetMidBlock2DCrossAttn",
    "only_cross_attention": False, "downsample_padding": 1, "mid_block_scale_factor": 1,
    "dropout": 0.0, "act_fn": "silu", "reverse_transformer_layers_per_block": None,
    "encoder_hid_dim": None, "encoder_hid_dim_type": None, "num_attention_heads": None,
    "dual_cross_attention": False, "class_embed_type": None, "addition_embed_type": None,
    "addition_time_embed_dim": None, "num_class_embeds": None,
    "resnet_time_scale_shift": "default", "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0, "time_embedding_type": "positional",
    "time_embedding_dim": None, "time_embedding_act_fn": None, "timestep_post_act": None,
    "time_cond_proj_dim": None, "conv_in_kernel": 3, "conv_out_kernel": 3,
    "projection_class_embeddings_input_dim": None, "attention_type": "default",
    "class_embeddings_concat": False, "mid_block_only_cross_attention": None,
    "cross_attention_norm": None, "transformer_layers_per_block": 1,
}
_UNET_IGNORED = ("addition_embed_type_num_heads",)  # read only with an addition embedding
# diffusers field -> ours (the same name unless listed)
_UNET_FIELDS = ("sample_size", "in_channels", "out_channels", "block_out_channels",
                "down_block_types", "up_block_types", "layers_per_block", "cross_attention_dim",
                "use_linear_projection", "upcast_attention", "norm_num_groups", "norm_eps",
                "flip_sin_to_cos", "freq_shift")

_VAE_FIXED = {"act_fn": "silu", "shift_factor": None, "latents_mean": None,
              "latents_std": None}
_VAE_IGNORED = ("force_upcast",)  # a dtype hint for diffusers' pipelines, not the model
_VAE_FIELDS = ("sample_size", "in_channels", "out_channels", "latent_channels",
               "block_out_channels", "layers_per_block", "norm_num_groups", "scaling_factor",
               "use_quant_conv", "use_post_quant_conv", "mid_block_add_attention")


def _equal(a, b) -> bool:
  norm = lambda v: list(v) if isinstance(v, tuple) else v
  return norm(a) == norm(b)


def _read_fields(hf: dict, where: str, fixed: dict, ignored, fields, extra: dict) -> dict:
  known = set(fixed) | set(ignored) | set(fields) | set(extra)
  for key, value in hf.items():
    if key.startswith("_"):
      continue  # _class_name, _diffusers_version, _name_or_path
    if key not in known:
      raise ValueError(f"{where}: config field {key!r}={value!r} is not supported")
    if key in fixed and not _equal(value, fixed[key]):
      raise ValueError(f"{where}: {key}={value!r} is not supported (only {fixed[key]!r})")
  out = {k: hf[k] for k in fields if k in hf}
  for key, value in out.items():
    if isinstance(value, list):
      out[key] = tuple(value)
  return out


def config_from_diffusers(hf: dict, where: str = "config.json", **overrides):
  """Our UNetConfig or VAEConfig from a diffusers config.json (its `_class_name` decides)."""
  cls = hf.get("_class_name")
  if cls == UNET_CLASS:
    d = _read_fields(hf, where, _UNET_FIXED, _UNET_IGNORED, _UNET_FIELDS,
                     {"attention_head_dim": None})
    if isinstance(hf.get("layers_per_block", 2), list):
      raise ValueError(f"{where}: layers_per_block per block is not supported")
    if isinstance(hf.get("cross_attention_dim", 1280), list):
      raise ValueError(f"{where}: cross_attention_dim per block is not supported")
    # diffusers' `attention_head_dim` is the number of heads (their naming slip).
    heads = hf.get("attention_head_dim", 8)
    d["num_attention_heads"] = tuple(heads) if isinstance(heads, list) else heads
    if isinstance(d.get("sample_size"), tuple):
      raise ValueError(f"{where}: a non-square sample_size is not supported")
    d.setdefault("cross_attention_dim", 1280)
    d.setdefault("use_linear_projection", False)  # diffusers' defaults where ours differ
    d.setdefault("block_out_channels", (320, 640, 1280, 1280))
    d.setdefault("num_attention_heads", 8)
    return UNetConfig.from_dict({**d, **overrides})
  if cls == VAE_CLASS:
    d = _read_fields(hf, where, _VAE_FIXED, _VAE_IGNORED, _VAE_FIELDS,
                     {"down_block_types": None, "up_block_types": None})
    for key, block in (("down_block_types", "DownEncoderBlock2D"),
                       ("up_block_types", "UpDecoderBlock2D")):
      bad = [t for t in hf.get(key, [block]) if t != block]
      if bad:
        raise ValueError(f"{where}: {key} {bad[0]!r} is not supported (only {block!r})")
    d.setdefault("block_out_channels", (64,))  # diffusers' default
    d.setdefault("layers_per_block", 1)
    d.setdefault("sample_size", 32)
    return VAEConfig.from_dict({**d, **overrides})
  raise ValueError(f"{where}: _class_name={cls!r}; expected {UNET_CLASS!r} or {VAE_CLASS!r}")


def config_to_diffusers(config) -> dict:
  """A diffusers config.json for our config (what `from_pretrained` needs to rebuild it)."""
  lists = lambda v: list(v) if isinstance(v, tuple) else v
  if isinstance(config, UNetConfig):
    out = {"_class_name": UNET_CLASS, **{k: lists(getattr(config, k)) for k in _UNET_FIELDS},
           "attention_head_dim": list(config.num_attention_heads),
           "transformer_layers_per_block": config.transformer_layers_per_block}
    out["mid_block_type"] = "UNetMidBlock2DCrossAttn"
    return out
  if isinstance(config, VAEConfig):
    n = len(config.block_out_channels)
    return {"_class_name": VAE_CLASS, **{k: lists(getattr(config, k)) for k in _VAE_FIELDS},
            "down_block_types": ["DownEncoderBlock2D"] * n,
            "up_block_types": ["UpDecoderBlock2D"] * n, "act_fn": "silu"}
  raise TypeError(f"not a U-Net or VAE config: {type(config).__name__}")


# ----------------------------------------------------------------------------- tensors

# diffusers' ModuleLists: `down_blocks.0` is our `down_blocks_0` (while `linear_1` is a name).
_LISTS = ("down_blocks", "up_blocks", "resnets", "attentions", "downsamplers", "upsamplers",
          "transformer_blocks", "to_out", "net")
_OLD_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out_0"}


def path_of(name: str) -> tuple[str, ...]:
  """A diffusers tensor name -> our param path (leaf 'weight' left for `to_ours` to rename)."""
  parts: list[str] = []
  for part in name.split("."):
    if part.isdigit() and parts:
      parts[-1] += f"_{part}"
    else:
      parts.append(_OLD_ATTENTION.get(part, part))
  return tuple(parts)


def to_ours(path: tuple[str, ...], value: np.ndarray, expected_ndim: int):
  """(our path, our array) for one diffusers tensor."""
  leaf = path[-1]
  if leaf == "bias":
    return path, value
  if leaf != "weight":
    raise ValueError(f"unexpected tensor {'.'.join(path)}")
  if value.ndim == 1:
    return path[:-1] + ("scale",), value
  if value.ndim == 4 and expected_ndim == 2:  # an old 1x1-conv attention projection
    value = value[:, :, 0, 0]
  if value.ndim == 4:
    return path[:-1] + ("kernel",), value.transpose(2, 3, 1, 0)
  return path[:-1] + ("kernel",), value.T


def _flatten(tree: dict, prefix=()) -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, prefix + (key,)))
    else:
      out[prefix + (key,)] = value
  return out


def abstract_params(config) -> dict:
  """{path: ShapeDtypeStruct} of a config's params."""
  import flax.linen as nn
  from unimodal_jax import sharding
  from unimodal_jax.models import build
  return _flatten(nn.meta.unbox(sharding.abstract_params(build.build(config), config)))


def params_from_diffusers(reader, config, dtype=None) -> dict:
  """Our param tree from a diffusers checkpoint (`reader`: a SafetensorsDir or a dict of numpy
  arrays). Missing tensors, tensors of the wrong shape and tensors the model would not use are
  errors that name them."""
  ours = abstract_params(config)
  names = reader.names() if hasattr(reader, "names") else sorted(reader)
  where = getattr(reader, "directory", "state dict")
  params: dict = {}
  unused = []
  for name in names:
    hf_path = path_of(name)
    probe = hf_path[:-1] + (("kernel",) if hf_path[-1] == "weight" else (hf_path[-1],))
    expected = ours.get(probe) or ours.get(hf_path[:-1] + ("scale",))
    if expected is None:
      unused.append(name)
      continue
    path, value = to_ours(hf_path, reader.get(name) if hasattr(reader, "get") else reader[name],
                          len(expected.shape))
    if path not in ours:
      unused.append(name)
      continue
    if tuple(value.shape) != tuple(ours[path].shape):
      raise ValueError(f"{where}: tensor {name!r} gives {'/'.join(path)} the shape "
                       f"{tuple(value.shape)}, but the config asks for {tuple(ours[path].shape)}; "
                       "does config.json belong to these weights?")
    node = params
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = value if dtype is None else value.astype(dtype)
  if unused:
    raise ValueError(f"{where}: tensors this {type(config).__name__} does not use: "
                     f"{unused[:8]}{' ...' if len(unused) > 8 else ''}")
  missing = sorted("/".join(p) for p in set(ours) - set(_flatten(params)))
  if missing:
    raise KeyError(f"{where}: checkpoint lacks the tensors for {missing[:8]}"
                   f"{' ...' if len(missing) > 8 else ''}")
  return params


def params_to_diffusers(params: dict) -> Iterator[tuple[str, np.ndarray]]:
  """(diffusers name, numpy array) for each of our params (the inverse of `to_ours`)."""
  for path, value in sorted(_flatten(params).items()):
    value = np.asarray(value)
    names = []
    for part in path[:-1]:
      head, _, index = part.rpartition("_")
      names += [head, index] if head in _LISTS and index.isdigit() else [part]
    leaf = path[-1]
    if leaf == "kernel":
      value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    yield ".".join(names + ["weight" if leaf in ("kernel", "scale") else leaf]), value


# ----------------------------------------------------------------------------- convert / export


def convert(hf_dir: str, out_dir: str, *, dtype: str = "keep", param_dtype: str = "float32",
            compute_dtype: str = "float32", concurrent_gb: float = 1.0):
  """A diffusers model directory (config.json + diffusion_pytorch_model safetensors) -> an orbax
  checkpoint at out_dir that `load_pretrained` reads. Returns the config."""
  from unimodal_jax import checkpoints
  from unimodal_jax.hf_decoder import SafetensorsDir

  config_path = os.path.join(hf_dir, "config.json")
  with open(config_path) as f:
    config = config_from_diffusers(json.load(f), where=config_path, param_dtype=param_dtype,
                                   dtype=compute_dtype)
  np_dtype = None if dtype == "keep" else jax.numpy.dtype(dtype)
  params = params_from_diffusers(SafetensorsDir(hf_dir, WEIGHTS), config, dtype=np_dtype)
  checkpoints.save_pretrained(out_dir, params, config, concurrent_gb=concurrent_gb)
  return config


PIPELINE_PARTS = ("unet", "vae")


def is_pipeline(hf_dir: str) -> bool:
  """A whole SD pipeline directory (model_index.json, unet/, vae/)."""
  return os.path.exists(os.path.join(hf_dir, "model_index.json")) or all(
      os.path.exists(os.path.join(hf_dir, part, "config.json")) for part in PIPELINE_PARTS)


def convert_pipeline(hf_dir: str, out_dir: str, **kwargs) -> dict:
  """unet/ and vae/ of an SD pipeline directory -> out_dir/unet and out_dir/vae (the text encoder
  is not needed: the LLM conditions the U-Net); scheduler/scheduler_config.json is copied."""
  configs = {}
  for part in PIPELINE_PARTS:
    source = os.path.join(hf_dir, part)
    if not os.path.exists(os.path.join(source, "config.json")):
      raise FileNotFoundError(f"{hf_dir}: pipeline directory has no {part}/config.json")
    configs[part] = convert(source, os.path.join(out_dir, part), **kwargs)
  scheduler = os.path.join(hf_dir, "scheduler", "scheduler_config.json")
  if os.path.exists(scheduler):
    os.makedirs(os.path.join(out_dir, "scheduler"), exist_ok=True)
    with open(scheduler) as f, open(os.path.join(out_dir, "scheduler",
                                                 "scheduler_config.json"), "w") as g:
      g.write(f.read())
  return configs


def max_difference(hf_dir: str, ckpt_dir: str, batch: int = 1, seed: int = 0) -> dict[str, Any]:
  """Max |ours - diffusers| of the converted model against diffusers' on random inputs (needs
  torch and diffusers): the U-Net's prediction, or the VAE's encoder mean and decoder output."""
  import torch
  import diffusers
  from unimodal_jax import checkpoints

  model, params = checkpoints.load_pretrained(ckpt_dir)
  cfg = model.config
  rng = np.random.default_rng(seed)
  if isinstance(cfg, UNetConfig):
    ref = diffusers.UNet2DConditionModel.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    x = rng.standard_normal((batch, cfg.sample_size, cfg.sample_size, cfg.in_channels),
                            np.float32)
    t = rng.integers(0, 1000, batch)
    c = rng.standard_normal((batch, 8, cfg.cross_attention_dim), np.float32)
    ours = np.asarray(model.apply({"params": params}, x, t, c))
    with torch.no_grad():
      theirs = ref(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t),
                   torch.from_numpy(c)).sample.numpy().transpose(0, 2, 3, 1)
    return {"unet": float(np.abs(ours - theirs).max()), "scale": float(np.abs(theirs).max())}
  ref = diffusers.AutoencoderKL.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
  x = rng.uniform(-1, 1, (batch, cfg.sample_size, cfg.sample_size, cfg.in_channels)
                  ).astype(np.float32)
  mean, _ = model.apply({"params": params}, x, method="encode")
  images = model.apply({"params": params}, mean, method="decode")
  with torch.no_grad():
    posterior = ref.encode(torch.from_numpy(x.transpose(0, 3, 1, 2))).latent_dist
    decoded = ref.decode(posterior.mean).sample
  theirs_mean = posterior.mean.numpy().transpose(0, 2, 3, 1)
  theirs_images = decoded.numpy().transpose(0, 2, 3, 1)
  return {"vae_mean": float(np.abs(np.asarray(mean) - theirs_mean).max()),
          "vae_decode": float(np.abs(np.asarray(images) - theirs_images).max()),
          "scale": float(max(np.abs(theirs_mean).max(), np.abs(theirs_images).max()))}
