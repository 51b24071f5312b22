"""Hugging Face LLaMA / Qwen2 <-> our decoder: config fields, tensor names and layouts.

Tensors are read lazily from safetensors files by memory map, so a 7B conversion streams from the
page cache instead of holding a second copy of the model in RAM.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Any, Iterator

import ml_dtypes
import numpy as np

from unimodal_jax.models.decoder_config import DecoderConfig

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")
# Tensors some checkpoints carry that hold no weights of ours (recomputed buffers).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


# ----------------------------------------------------------------------------- config


def _rope_theta(hf: dict, where: str) -> float:
  rope = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling")
  rope_type = rope.get("rope_type", "default")
  if rope_type != "default" or (scaling and scaling.get("rope_type", scaling.get("type")) not in
                                (None, "default")):
    raise ValueError(f"{where}: rope scaling {rope or scaling} is not supported yet (only "
                     "rope_type 'default')")
  return float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))


def config_from_hf(hf: dict, where: str = "config.json", **overrides) -> DecoderConfig:
  """DecoderConfig from a Hugging Face config.json dict; unsupported features raise, naming the
  field, instead of converting into a model that computes something else."""
  model_type = hf.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise ValueError(f"{where}: model_type={model_type!r}; supported: {SUPPORTED_MODEL_TYPES}")
  if hf.get("hidden_act", "silu") != "silu":
    raise ValueError(f"{where}: hidden_act={hf['hidden_act']!r}; only 'silu' (SwiGLU) is supported")
  if hf.get("mlp_bias"):
    raise ValueError(f"{where}: mlp_bias=true is not supported")
  if model_type == "qwen2" and hf.get("use_sliding_window"):
    raise ValueError(f"{where}: use_sliding_window=true is not supported")
  num_heads = hf["num_attention_heads"]
  fields = dict(
      vocab_size=hf["vocab_size"],
      hidden_size=hf["hidden_size"],
      intermediate_size=hf["intermediate_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=num_heads,
      num_kv_heads=hf.get("num_key_value_heads") or num_heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // num_heads,
      rope_theta=_rope_theta(hf, where),
      rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
      qkv_bias=True if model_type == "qwen2" else bool(hf.get("attention_bias", False)),
      o_bias=False if model_type == "qwen2" else bool(hf.get("attention_bias", False)),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      max_seq_len=hf.get("max_position_embeddings", 4096),
      initializer_range=hf.get("initializer_range", 0.02),
      family=model_type,
  )
  fields.update(overrides)
  return DecoderConfig(**fields)


def config_to_hf(cfg: DecoderConfig, torch_dtype: str) -> dict:
  hf = {
      "architectures": ["Qwen2ForCausalLM" if cfg.family == "qwen2" else "LlamaForCausalLM"],
      "model_type": cfg.family,
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size,
      "intermediate_size": cfg.intermediate_size,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim,
      "hidden_act": "silu",
      "rms_norm_eps": cfg.rms_norm_eps,
      "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
      "rope_theta": cfg.rope_theta,
      "tie_word_embeddings": cfg.tie_embeddings,
      "max_position_embeddings": cfg.max_seq_len,
      "initializer_range": cfg.initializer_range,
      "dtype": torch_dtype,
  }
  if cfg.family == "llama":
    if cfg.qkv_bias != cfg.o_bias:
      raise ValueError("a llama-family export needs qkv_bias == o_bias (HF's attention_bias)")
    hf.update(attention_bias=cfg.qkv_bias, mlp_bias=False)
  else:
    if not cfg.qkv_bias or cfg.o_bias:
      raise ValueError("a qwen2-family export needs qkv_bias=True and o_bias=False")
    hf.update(use_sliding_window=False, sliding_window=None)
  return hf


# ----------------------------------------------------------------------------- safetensors


class SafetensorsDir:
  """Lazy, read-only view of the safetensors file(s) of a Hugging Face model directory.

  Hand-written because `safetensors`' numpy loader copies every tensor into RAM; here each tensor
  is a view into a memory map of its file, so nothing is read until used.
  """

  def __init__(self, directory: str, basename: str = "model"):
    """`basename`: 'model' (transformers) or 'diffusion_pytorch_model' (diffusers)."""
    self.directory = directory
    index = os.path.join(directory, f"{basename}.safetensors.index.json")
    single = os.path.join(directory, f"{basename}.safetensors")
    if os.path.exists(index):
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
      files = sorted(set(weight_map.values()))
    elif os.path.exists(single):
      files = [f"{basename}.safetensors"]
    else:
      raise FileNotFoundError(f"{directory}: no {basename}.safetensors or "
                              f"{basename}.safetensors.index.json")
    self._entries: dict[str, tuple[str, dict, int]] = {}
    for name in files:
      path = os.path.join(directory, name)
      with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
      header.pop("__metadata__", None)
      for tensor_name, info in header.items():
        self._entries[tensor_name] = (path, info, 8 + header_len)
    self._maps: dict[str, np.memmap] = {}

  def names(self) -> list[str]:
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries

  def get(self, name: str) -> np.ndarray:
    if name not in self._entries:
      raise KeyError(f"{self.directory}: tensor {name!r} not found")
    path, info, data_start = self._entries[name]
    if info["dtype"] not in _SAFETENSORS_DTYPES:
      raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    if path not in self._maps:
      self._maps[path] = np.memmap(path, dtype=np.uint8, mode="r")
    begin, end = info["data_offsets"]
    raw = self._maps[path][data_start + begin:data_start + end]
    return raw.view(_SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])


# ----------------------------------------------------------------------------- tensors


def _layer_mapping(cfg: DecoderConfig, i: int):
  """(hf name, our path, hf->ours, ours->hf) for one layer. Torch Linear stores [out, in]."""
  e, h, k, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  hf, ours = f"model.layers.{i}.", f"layers_{i}"

  def proj_in(heads):  # [heads*d, e] <-> [e, heads, d]
    return (lambda w: w.T.reshape(e, heads, d), lambda w: w.reshape(e, heads * d).T)

  def bias(heads):
    return (lambda b: b.reshape(heads, d), lambda b: b.reshape(heads * d))

  transpose = (lambda w: w.T, lambda w: w.T)
  same = (lambda w: w, lambda w: w)
  rows = [
      ("self_attn.q_proj.weight", "attn/q_proj/kernel", *proj_in(h)),
      ("self_attn.k_proj.weight", "attn/k_proj/kernel", *proj_in(k)),
      ("self_attn.v_proj.weight", "attn/v_proj/kernel", *proj_in(k)),
      ("self_attn.o_proj.weight", "attn/o_proj/kernel",
       lambda w: w.T.reshape(h, d, e), lambda w: w.reshape(h * d, e).T),
      ("mlp.gate_proj.weight", "mlp/gate_proj/kernel", *transpose),
      ("mlp.up_proj.weight", "mlp/up_proj/kernel", *transpose),
      ("mlp.down_proj.weight", "mlp/down_proj/kernel", *transpose),
      ("input_layernorm.weight", "input_norm/scale", *same),
      ("post_attention_layernorm.weight", "post_attn_norm/scale", *same),
  ]
  if cfg.o_bias:
    rows.append(("self_attn.o_proj.bias", "attn/o_proj/bias", *same))
  if cfg.qkv_bias:
    rows += [
        ("self_attn.q_proj.bias", "attn/q_proj/bias", *bias(h)),
        ("self_attn.k_proj.bias", "attn/k_proj/bias", *bias(k)),
        ("self_attn.v_proj.bias", "attn/v_proj/bias", *bias(k)),
    ]
  return [(hf + a, f"{ours}/{b}", f, g) for a, b, f, g in rows]


def tensor_mapping(cfg: DecoderConfig):
  """Every (hf name, our '/'-joined path, hf->ours, ours->hf) of the model."""
  same = (lambda w: w, lambda w: w)
  rows = [("model.embed_tokens.weight", "embed_tokens/embedding", *same),
          ("model.norm.weight", "final_norm/scale", *same)]
  if not cfg.tie_embeddings:
    rows.append(("lm_head.weight", "lm_head/kernel", lambda w: w.T, lambda w: w.T))
  for i in range(cfg.num_layers):
    rows += _layer_mapping(cfg, i)
  return rows


def _set_path(tree: dict, path: str, value) -> None:
  *parents, leaf = path.split("/")
  for p in parents:
    tree = tree.setdefault(p, {})
  tree[leaf] = value


def _get_path(tree: dict, path: str):
  for p in path.split("/"):
    tree = tree[p]
  return tree


def params_from_hf(reader: SafetensorsDir, cfg: DecoderConfig, dtype=None) -> dict:
  """Our (unscanned) param tree from a Hugging Face checkpoint: lazy views unless `dtype` asks
  for a cast. Missing tensors raise; tensors we would not use raise too (nothing dropped silently)."""
  params: dict = {}
  used = set()
  for hf_name, path, to_ours, _ in tensor_mapping(cfg):
    if hf_name not in reader:
      raise KeyError(f"{reader.directory}: checkpoint lacks tensor {hf_name!r} (needed for {path})")
    raw = reader.get(hf_name)
    expected = _expected_shape(cfg, path)
    try:
      value = to_ours(raw)
    except ValueError:  # a reshape that cannot fit: the config and the tensor disagree
      value = raw
    if tuple(value.shape) != expected:
      raise ValueError(f"{reader.directory}: tensor {hf_name!r} has shape {raw.shape}, which does "
                       f"not fit {path} of shape {expected} from config.json")
    _set_path(params, path, value if dtype is None else value.astype(dtype))
    used.add(hf_name)
  unused = [n for n in reader.names() if n not in used and not n.endswith(IGNORED_SUFFIXES)
            and not (cfg.tie_embeddings and n == "lm_head.weight")]
  if unused:
    raise ValueError(f"{reader.directory}: tensors not used by a {cfg.family} decoder: "
                     f"{unused[:10]}{' ...' if len(unused) > 10 else ''}")
  return params


def params_to_hf(params: dict, cfg: DecoderConfig) -> Iterator[tuple[str, Any]]:
  """(hf name, array) pairs of an unscanned param tree, in Hugging Face layout."""
  for hf_name, path, _, to_hf in tensor_mapping(cfg):
    yield hf_name, np.ascontiguousarray(to_hf(np.asarray(_get_path(params, path))))


def _expected_shape(cfg: DecoderConfig, path: str) -> tuple[int, ...]:
  e, m, h, k, d, v = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads,
                      cfg.head_dim, cfg.vocab_size)
  leaf = path.split("/", 1)[1] if path.startswith("layers_") else path
  return {
      "embed_tokens/embedding": (v, e), "final_norm/scale": (e,), "lm_head/kernel": (e, v),
      "attn/q_proj/kernel": (e, h, d), "attn/k_proj/kernel": (e, k, d),
      "attn/v_proj/kernel": (e, k, d), "attn/o_proj/kernel": (h, d, e),
      "attn/q_proj/bias": (h, d), "attn/o_proj/bias": (e,), "attn/k_proj/bias": (k, d), "attn/v_proj/bias": (k, d),
      "mlp/gate_proj/kernel": (e, m), "mlp/up_proj/kernel": (e, m), "mlp/down_proj/kernel": (m, e),
      "input_norm/scale": (e,), "post_attn_norm/scale": (e,),
  }[leaf]
