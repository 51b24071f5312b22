"""Hugging Face CLIP / SigLIP vision towers -> our VisionTransformer: config fields, tensor names
and layouts, and a converter that writes an orbax checkpoint.

Accepted checkpoints: a standalone CLIPVisionModel or SiglipVisionModel (tensors named
`embeddings.…`, or `vision_model.embeddings.…` as transformers 4.x saved them), and the vision
half of a full CLIPModel or SiglipModel (`vision_model.…`; the text tower, projections and logit
scale stay behind). Tensors are read lazily through `hf_decoder.SafetensorsDir`.

    cfg = config_from_hf(json.load(open(f"{hf_dir}/config.json")))
    params = params_from_hf(SafetensorsDir(hf_dir), cfg)          # prefix found by itself
    convert_clip_vision(hf_dir, out_dir)                          # orbax, like save_pretrained
    model, params = load_vit(out_dir)
"""
from __future__ import annotations

import json
import os
from typing import Callable

import jax
import numpy as np

from unimodal_jax.hf_decoder import SafetensorsDir
from unimodal_jax.models.vit import KIND, VisionTransformer, VitConfig, param_shapes

FULL_MODEL_PREFIX = "vision_model."
# Buffers some checkpoints carry that hold no weights (recomputed by the model).
IGNORED_SUFFIXES = ("position_ids",)
# transformers' activation names -> ours. (gelu_new is the tanh approximation as well.)
ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
               "gelu_new": "gelu_tanh"}
# transformers' defaults, for config.json files that leave fields out.
_DEFAULTS = {
    "clip_vision_model": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                              num_attention_heads=12, num_channels=3, image_size=224,
                              patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5),
    "siglip_vision_model": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                num_attention_heads=12, num_channels=3, image_size=224,
                                patch_size=16, hidden_act="gelu_pytorch_tanh",
                                layer_norm_eps=1e-6, vision_use_head=True),
}
SUPPORTED_MODEL_TYPES = ("clip_vision_model", "clip", "siglip_vision_model", "siglip")


# ----------------------------------------------------------------------------- config


def config_from_hf(hf: dict, where: str = "config.json", **overrides) -> VitConfig:
  """VitConfig from a config.json dict of a CLIP/SigLIP vision model or a full CLIP/SigLIP model
  (its `vision_config`). Unsupported settings raise, naming the field."""
  model_type = hf.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise ValueError(f"{where}: model_type={model_type!r}; supported: {SUPPORTED_MODEL_TYPES} "
                     "(siglip2's variable-resolution patches are not)")
  if model_type in ("clip", "siglip"):
    hf = hf.get("vision_config") or {}
    where = f"{where}: vision_config"
    model_type = f"{model_type}_vision_model"
  v = dict(_DEFAULTS[model_type])
  v.update({k: val for k, val in hf.items() if val is not None})
  act = v["hidden_act"]
  if act not in ACTIVATIONS:
    raise ValueError(f"{where}: hidden_act={act!r}; supported: {sorted(ACTIVATIONS)}")
  siglip = model_type == "siglip_vision_model"
  fields = dict(
      image_size=int(v["image_size"]),
      patch_size=int(v["patch_size"]),
      hidden_size=int(v["hidden_size"]),
      intermediate_size=int(v["intermediate_size"]),
      num_layers=int(v["num_hidden_layers"]),
      num_heads=int(v["num_attention_heads"]),
      num_channels=int(v["num_channels"]),
      layer_norm_eps=float(v["layer_norm_eps"]),
      hidden_act=ACTIVATIONS[act],
      class_token=not siglip,
      patch_bias=siglip,
      pre_layernorm=not siglip,
      post_layernorm="sequence" if siglip else "pooled",
      pooling=("map" if v.get("vision_use_head", True) else "none") if siglip else "cls",
      initializer_range=float(v.get("initializer_range", 0.02)),
  )
  fields.update(overrides)
  try:
    return VitConfig(**fields)
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from e


# ----------------------------------------------------------------------------- tensors

Row = tuple[str, str, tuple[int, ...], Callable[[np.ndarray], np.ndarray]]


def _linear_rows(hf: str, ours: str, e_in: int, e_out: int) -> list[Row]:
  """A torch Linear [out, in] + bias -> flax Dense kernel [in, out] + bias."""
  return [(f"{hf}.weight", f"{ours}/kernel", (e_out, e_in), lambda w: w.T),
          (f"{hf}.bias", f"{ours}/bias", (e_out,), lambda b: b)]


def _norm_rows(hf: str, ours: str, e: int) -> list[Row]:
  return [(f"{hf}.weight", f"{ours}/scale", (e,), lambda w: w),
          (f"{hf}.bias", f"{ours}/bias", (e,), lambda b: b)]


def _attention_rows(cfg: VitConfig, hf: str, ours: str) -> list[Row]:
  """q/k/v/out projections as four Linears [E, E] -> ours [E, H, D] / [H, D, E]."""
  e, h, d = cfg.hidden_size, cfg.num_heads, cfg.head_dim
  rows = []
  for name in ("q_proj", "k_proj", "v_proj"):
    rows += [(f"{hf}.{name}.weight", f"{ours}/{name}/kernel", (e, e),
              lambda w: w.T.reshape(e, h, d)),
             (f"{hf}.{name}.bias", f"{ours}/{name}/bias", (e,), lambda b: b.reshape(h, d))]
  rows += [(f"{hf}.out_proj.weight", f"{ours}/o_proj/kernel", (e, e),
            lambda w: w.T.reshape(h, d, e)),
           (f"{hf}.out_proj.bias", f"{ours}/o_proj/bias", (e,), lambda b: b)]
  return rows


def _fused_attention_rows(cfg: VitConfig, hf: str, ours: str) -> list[Row]:
  """torch.nn.MultiheadAttention (SigLIP's pooling head): q, k, v stacked in in_proj [3E, E]."""
  e, h, d = cfg.hidden_size, cfg.num_heads, cfg.head_dim
  rows = []
  for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
    rows += [(f"{hf}.in_proj_weight", f"{ours}/{name}/kernel", (3 * e, e),
              lambda w, i=i: w[i * e:(i + 1) * e].T.reshape(e, h, d)),
             (f"{hf}.in_proj_bias", f"{ours}/{name}/bias", (3 * e,),
              lambda b, i=i: b[i * e:(i + 1) * e].reshape(h, d))]
  rows += [(f"{hf}.out_proj.weight", f"{ours}/o_proj/kernel", (e, e),
            lambda w: w.T.reshape(h, d, e)),
           (f"{hf}.out_proj.bias", f"{ours}/o_proj/bias", (e,), lambda b: b)]
  return rows


def tensor_mapping(cfg: VitConfig) -> list[Row]:
  """Every (hf name without prefix, our '/'-joined path, hf shape, hf->ours) of the tower.
  One hf tensor may feed several of ours (the pooling head's fused in_proj)."""
  e, m, p, c = cfg.hidden_size, cfg.intermediate_size, cfg.patch_size, cfg.num_channels
  rows: list[Row] = [
      ("embeddings.patch_embedding.weight", "patch_embed/kernel", (e, c, p, p),
       lambda w: w.transpose(2, 3, 1, 0)),
      ("embeddings.position_embedding.weight", "position_embedding", (cfg.seq_len, e),
       lambda w: w),
  ]
  if cfg.patch_bias:
    rows.append(("embeddings.patch_embedding.bias", "patch_embed/bias", (e,), lambda b: b))
  if cfg.class_token:
    rows.append(("embeddings.class_embedding", "class_embedding", (e,), lambda w: w))
  if cfg.pre_layernorm:
    rows += _norm_rows("pre_layrnorm", "pre_norm", e)  # sic: transformers' spelling
  for i in range(cfg.num_layers):
    hf, ours = f"encoder.layers.{i}", f"layers_{i}"
    rows += _attention_rows(cfg, f"{hf}.self_attn", f"{ours}/attn")
    rows += _norm_rows(f"{hf}.layer_norm1", f"{ours}/norm1", e)
    rows += _norm_rows(f"{hf}.layer_norm2", f"{ours}/norm2", e)
    rows += _linear_rows(f"{hf}.mlp.fc1", f"{ours}/mlp/fc1", e, m)
    rows += _linear_rows(f"{hf}.mlp.fc2", f"{ours}/mlp/fc2", m, e)
  if cfg.post_layernorm != "none":
    rows += _norm_rows("post_layernorm", "post_norm", e)
  if cfg.pooling == "map":
    rows.append(("head.probe", "map_head/probe", (1, 1, e), lambda w: w))
    rows += _fused_attention_rows(cfg, "head.attention", "map_head/attn")
    rows += _norm_rows("head.layernorm", "map_head/norm", e)
    rows += _linear_rows("head.mlp.fc1", "map_head/mlp/fc1", e, m)
    rows += _linear_rows("head.mlp.fc2", "map_head/mlp/fc2", m, e)
  return rows


def detect_prefix(reader: SafetensorsDir) -> str:
  """'' for a standalone vision model (transformers >= 5), 'vision_model.' for a full CLIP/SigLIP
  model or a vision model saved by transformers 4.x."""
  for prefix in ("", FULL_MODEL_PREFIX):
    if f"{prefix}embeddings.patch_embedding.weight" in reader:
      return prefix
  names = reader.names()
  raise KeyError(f"{reader.directory}: no vision tower found: neither "
                 f"'embeddings.patch_embedding.weight' nor '{FULL_MODEL_PREFIX}embeddings."
                 f"patch_embedding.weight' is in the checkpoint (tensors look like {names[:4]})")


def _set_path(tree: dict, path: str, value) -> None:
  *parents, leaf = path.split("/")
  for part in parents:
    tree = tree.setdefault(part, {})
  tree[leaf] = value


def params_from_hf(reader: SafetensorsDir, cfg: VitConfig, prefix: str | None = None,
                   dtype=None) -> dict:
  """Our param tree from a CLIP/SigLIP checkpoint: lazy views unless `dtype` asks for a cast.

  `prefix` is prepended to every transformers name: None finds it ('' or 'vision_model.').
  Missing tensors raise KeyError; a shape that does not fit the config raises ValueError; tensors
  under the prefix that the tower would not use raise ValueError (nothing dropped silently).
  Tensors outside the prefix (a full model's text tower, projections) are not ours and are left.
  """
  prefix = detect_prefix(reader) if prefix is None else prefix
  ours = param_shapes(cfg)
  params: dict = {}
  used = set()
  for hf_name, path, hf_shape, to_ours in tensor_mapping(cfg):
    name = prefix + hf_name
    if name not in reader:
      raise KeyError(f"{reader.directory}: checkpoint lacks tensor {name!r} (needed for {path})")
    raw = reader.get(name)
    if tuple(raw.shape) != hf_shape:
      raise ValueError(f"{reader.directory}: tensor {name!r} has shape {tuple(raw.shape)}, but "
                       f"the config asks for {hf_shape} (for {path}); does config.json belong "
                       "to these weights?")
    value = to_ours(raw)
    assert tuple(value.shape) == ours[path], (path, value.shape, ours[path])
    _set_path(params, path, value if dtype is None else value.astype(dtype))
    used.add(name)
  missing = sorted(set(ours) - {path for _, path, _, _ in tensor_mapping(cfg)})
  assert not missing, f"tensor_mapping does not cover {missing}"
  unused = [n for n in reader.names() if n.startswith(prefix) and n not in used
            and not n.endswith(IGNORED_SUFFIXES)]
  if unused:
    raise ValueError(f"{reader.directory}: tensors not used by this vision tower (config: "
                     f"pooling={cfg.pooling!r}, {cfg.num_layers} layers): "
                     f"{unused[:10]}{' ...' if len(unused) > 10 else ''}")
  return params


# ----------------------------------------------------------------------------- convert / load


def convert_clip_vision(hf_dir: str, out_dir: str, *, dtype: str = "keep",
                        param_dtype: str = "float32", compute_dtype: str = "float32",
                        prefix: str | None = None, concurrent_gb: float = 1.0) -> VitConfig:
  """Convert the vision tower in `hf_dir` into an orbax checkpoint at `out_dir`.

  The layout is `checkpoints.save_pretrained`'s (step 0 with items `params` and `model_config`);
  the model config is `VitConfig.to_dict()`, whose "kind": "vit" tells it from a decoder.
  `dtype` 'keep' streams tensors in the file's dtype; 'float32'/'bfloat16' casts (materializes).
  """
  from unimodal_jax import checkpoints

  config_path = os.path.join(hf_dir, "config.json")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{config_path} not found")
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    raise FileExistsError(f"out_dir {out_dir} is not empty; choose a new directory")
  if dtype not in ("keep", "float32", "bfloat16"):
    raise ValueError(f"dtype={dtype!r}; expected 'keep', 'float32' or 'bfloat16'")
  with open(config_path) as f:
    cfg = config_from_hf(json.load(f), where=config_path, param_dtype=param_dtype,
                         dtype=compute_dtype)
  params = params_from_hf(SafetensorsDir(hf_dir), cfg, prefix=prefix,
                          dtype=None if dtype == "keep" else jax.numpy.dtype(dtype))
  checkpoints.save_pretrained(out_dir, params, cfg, concurrent_gb=concurrent_gb)
  return cfg


def load_vit(directory: str, *, step: int | None = None, config_overrides: dict | None = None):
  """`model, params = load_vit(dir)` for a checkpoint written by convert_clip_vision (or any
  save_pretrained-layout directory whose model_config has "kind": "vit"). Params land on the
  default device, cast to the config's param_dtype."""
  import orbax.checkpoint as ocp

  from unimodal_jax import checkpoints

  directory = checkpoints.resolve_directory(directory)
  step = checkpoints.latest_step(directory) if step is None else step
  with ocp.CheckpointManager(directory, item_handlers=checkpoints.item_handlers(),
                             options=ocp.CheckpointManagerOptions(create=False)) as manager:
    stored_config = manager.restore(step, args=ocp.args.Composite(
        model_config=ocp.args.JsonRestore()))[checkpoints.MODEL_CONFIG]
    if stored_config.get("kind") != KIND:
      raise ValueError(f"{directory}: step {step} holds a model_config with kind="
                       f"{stored_config.get('kind')!r}, not {KIND!r} (a decoder checkpoint? "
                       "use unimodal_jax.load_pretrained)")
    cfg = VitConfig.from_dict(stored_config)
    if config_overrides:
      cfg = cfg.replace(**config_overrides)
    stored = manager.item_metadata(step)[checkpoints.PARAMS]
    stored = stored.tree if hasattr(stored, "tree") else stored
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          stored)
    params = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(target)))[checkpoints.PARAMS]
  dtype = cfg.jnp_param_dtype
  params = jax.tree.map(lambda x: x.astype(dtype) if x.dtype != dtype else x, params)
  return VisionTransformer(cfg), params


def max_difference(hf_dir: str, ckpt_dir: str, batch: int = 2, seed: int = 0) -> dict:
  """Run transformers' tower in hf_dir and our converted checkpoint on the same random images;
  max |difference| of the last hidden state and of the pooled output (needs torch)."""
  import torch
  import transformers

  with open(os.path.join(hf_dir, "config.json")) as f:
    model_type = json.load(f).get("model_type")
  classes = {"clip_vision_model": transformers.CLIPVisionModel, "clip": transformers.CLIPModel,
             "siglip_vision_model": transformers.SiglipVisionModel,
             "siglip": transformers.SiglipModel}
  if model_type not in classes:
    raise ValueError(f"{hf_dir}: model_type={model_type!r}; supported: {sorted(classes)}")
  hf = classes[model_type].from_pretrained(hf_dir, dtype=torch.float32).eval()
  hf = getattr(hf, "vision_model", hf)
  model, params = load_vit(ckpt_dir)
  cfg = model.config
  images = np.random.RandomState(seed).randn(batch, cfg.image_size, cfg.image_size,
                                             cfg.num_channels).astype(np.float32)
  out = model.apply({"params": params}, images)
  with torch.no_grad():
    ref = hf(pixel_values=torch.tensor(images.transpose(0, 3, 1, 2)))
  diff = {"last_hidden_state": float(np.abs(np.asarray(out.last_hidden_state)
                                             - ref.last_hidden_state.numpy()).max())}
  if out.pooled is not None:
    diff["pooled"] = float(np.abs(np.asarray(out.pooled) - ref.pooler_output.numpy()).max())
  return diff
