"""Where a fresh run's params come from (a resumed run reads its own checkpoint instead):

- `train.init_from = DIR`: a whole model of the same kind and shape: for a decoder, any
  converted or trained decoder checkpoint (load_pretrained, resharded onto the mesh); for ILLUME,
  the previous stage's workdir (stage 2 starts from stage 1, stage 3 from stage 2).
- `train.init_parts = {part: DIR}` (ILLUME, DreamLLM): the random init with some parts
  replaced, e.g. stage 1's {'llm': a pretrained decoder, 'vision_encoder': a CLIP or ViT
  checkpoint, 'unet': a U-Net}. A CLIP checkpoint gives its vision tower. For ILLUME,
  'vision_embed_head': a semantic tokenizer checkpoint starts the image codes' embedding and
  head rows from its codebook's geometry (code_rows_from_codebook).
Shapes must match exactly; a mismatch names the part and the first differing parameter.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from unimodal_jax import checkpoints
from unimodal_jax.models import dreamllm, illume

# init_parts' name for ILLUME's code rows started from a semantic tokenizer's codebook.
CODEBOOK_PART = "vision_embed_head"

# Models made of parts (init_parts names them); a plain decoder loads whole.
_MODELS_OF_PARTS = (illume.IllumeConfig, dreamllm.DreamLLMConfig)


def _check_same_shapes(expected, got, where: str):
  exp = jax.tree_util.tree_flatten_with_path(expected)[0]
  have = {jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_flatten_with_path(got)[0]}
  for path, leaf in exp:
    key = jax.tree_util.keystr(path)
    if key not in have:
      raise ValueError(f"{where}: parameter {key} is missing")
    if tuple(have[key]) != tuple(leaf.shape):
      raise ValueError(f"{where}: parameter {key} has shape {tuple(have[key])}, the model "
                       f"expects {tuple(leaf.shape)}")
  if len(have) != len(exp):
    extra = sorted(set(have) - {jax.tree_util.keystr(p) for p, _ in exp})
    raise ValueError(f"{where}: unexpected parameters {extra[:5]}")


def _part_params(directory: str, part: str):
  params, model_config = checkpoints.restore_params(directory)
  if part == "vision_encoder" and "vision" in params and "text" in params:
    params = params["vision"]  # a CLIP checkpoint: its image tower
  elif part == "llm" and model_config.get("kind") in (illume.KIND, dreamllm.KIND):
    params = params["llm"]
  return params


def code_rows_from_codebook(embedding, head, codebook, seed: int):
  """ILLUME's image-code rows started from the tokenizer's codebook: each code's unit codebook
  vector through one fixed random projection (std of the rows' own init scale) is added to its
  random embedding row and head column, both scaled by 1/sqrt(2). Codes the tokenizer holds close
  start close for the LLM, for reading and for writing.

  embedding [codes, hidden], head [hidden, codes], codebook [codes, code_dim] -> (embedding, head).
  """
  embedding, head = np.asarray(embedding), np.asarray(head)
  codebook = np.asarray(codebook, np.float32)
  if codebook.shape[0] != embedding.shape[0] or head.shape != embedding.shape[::-1]:
    raise ValueError(f"code rows from the codebook: codebook {codebook.shape}, embedding "
                     f"{embedding.shape} and head {head.shape} disagree on the number of codes "
                     f"or the width")
  unit = codebook / np.maximum(np.linalg.norm(codebook, axis=1, keepdims=True), 1e-12)
  scale = float(np.std(embedding))
  projection = np.random.default_rng(seed).standard_normal(
      (codebook.shape[1], embedding.shape[1])).astype(np.float32) * scale
  geometry = unit @ projection
  return ((embedding / np.sqrt(2) + geometry).astype(embedding.dtype),
          (head / np.sqrt(2) + geometry.T).astype(head.dtype))


def initial_params(config, model, model_config, abstract_params, mesh, log):
  """Params to start from, or None for the model's random init (done sharded by init_state)."""
  train_cfg = config.train
  init_from = train_cfg.get("init_from") or ""
  parts = dict(train_cfg.get("init_parts") or {})
  if init_from and parts:
    raise ValueError("config.train: give init_from (a whole model) or init_parts, not both")
  if not isinstance(model_config, _MODELS_OF_PARTS):
    if parts:
      raise ValueError("config.train.init_parts is for ILLUME and DreamLLM models; a decoder "
                       "uses init_from")
    if not init_from:
      return None
    _, params = checkpoints.load_pretrained(init_from, mesh=mesh, config_overrides={
        k: getattr(model_config, k) for k in ("param_dtype", "dtype", "logits_dtype",
                                              "scan_layers", "remat_policy")})
    log(f"initialized params from {init_from}")
    return params
  if init_from:
    params, _ = checkpoints.restore_params(init_from)
    _check_same_shapes(abstract_params, params, f"config.train.init_from={init_from}")
    log(f"initialized params from {init_from}")
    return params
  if not parts:
    return None
  codebook_dir = parts.pop(CODEBOOK_PART, None)
  if codebook_dir is not None and not isinstance(model_config, illume.IllumeConfig):
    raise ValueError(f"config.train.init_parts.{CODEBOOK_PART} is for ILLUME models")
  unknown = sorted(set(parts) - set(abstract_params))
  if unknown:
    raise ValueError(f"config.train.init_parts: unknown part(s) {unknown}; the model's parts "
                     f"are {sorted(abstract_params)}")
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(int(train_cfg.seed)),
                                             jnp.zeros((1, 8), jnp.int32))["params"])
  for part, directory in parts.items():
    loaded = _part_params(directory, part)
    _check_same_shapes(abstract_params[part], loaded, f"config.train.init_parts.{part}={directory}")
    params[part] = loaded
    log(f"initialized {part} from {directory}")
  if codebook_dir is not None:
    # load_pretrained: a shipped tokenizer or a tokenizer training workdir alike.
    tokenizer = checkpoints.load_pretrained(codebook_dir)[1]
    if "vq_stats" not in tokenizer:
      raise ValueError(f"config.train.init_parts.{CODEBOOK_PART}={codebook_dir}: not a semantic "
                       f"tokenizer checkpoint (no vq_stats/quantizer/codebook)")
    emb, head = code_rows_from_codebook(params["vision_embed"]["embedding"],
                                        params["vision_head"]["kernel"],
                                        tokenizer["vq_stats"]["quantizer"]["codebook"],
                                        int(train_cfg.seed))
    params["vision_embed"]["embedding"], params["vision_head"]["kernel"] = (
        jnp.asarray(emb), jnp.asarray(head))
    log(f"initialized the image codes' embedding and head from the codebook in {codebook_dir}")
  return params
