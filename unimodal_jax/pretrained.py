"""Pretrained parts shipped in the repository, trained once by their own experiment and loaded by
the main jobs, as ILLUME and DreamLLM start their stages from pretrained parts. ILLUME's: a
semantic encoder (CLIP, with its text tokenizer), the semantic tokenizer and its pixel decoder;
DreamLLM's: its diffusion decoder (a U-Net pretrained on that CLIP's text states).

    DIR/MANIFEST.json    what the parts are: the config they were trained with and its sha256,
                         the command that made them, their figures, when, from which commit
    DIR/clip/            orbax model directories (step 0: params + model_config), each loadable
    DIR/tokenizer/       by `load_pretrained` and together by `ImageCodec.load(DIR)`
    DIR/pixel_decoder/
    DIR/diffusion_decoder/   (DreamLLM's directory holds this one only: DREAMLLM_PARTS)

`tools/ship_pretrained.py` writes such a directory from a training workdir; `resolve(DIR,
tokenizer_config)` checks that the parts were trained with exactly `tokenizer_config` before a
job uses them, so a changed recipe cannot silently run on parts of another one.
"""
from __future__ import annotations

import hashlib
import json
import os

MANIFEST = "MANIFEST.json"
PARTS = ("clip", "tokenizer", "pixel_decoder")
DREAMLLM_PARTS = ("diffusion_decoder",)
EXTRA_FILES = ("tokenizer.model",)  # shipped beside a part's weights when its workdir has them
NONE = "none"  # config.pretrained value that trains every part from scratch
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Options added to a recipe after parts were shipped with it, each at the value that keeps the
# old behaviour: at that value they are left out of the recipe's identity, so the shipped parts
# and the workdirs whose config.json predates them stay valid.
ADDED_AT_DEFAULT = {("tokenizer", "encoder_layer"): -1}


def canonical(tokenizer_config) -> dict:
  """The config as a plain dict without the ADDED_AT_DEFAULT options at their default."""
  d = tokenizer_config.to_dict() if hasattr(tokenizer_config, "to_dict") else tokenizer_config
  d = json.loads(json.dumps(d, default=str))  # a deep copy with JSON's types
  for (*parents, key), default in ADDED_AT_DEFAULT.items():
    section = d
    for name in parents:
      section = section.get(name) if isinstance(section, dict) else None
    if isinstance(section, dict) and key in section and section[key] == default:
      del section[key]
  return d


def config_sha256(tokenizer_config) -> str:
  """sha256 of the config's canonical JSON (sorted keys): the identity of a recipe."""
  return hashlib.sha256(json.dumps(canonical(tokenizer_config), sort_keys=True,
                                   default=str).encode()).hexdigest()


def directory_of(path: str) -> str:
  """A path written in a config: absolute, or relative to the repository root (so a config's
  hash does not depend on where the repository was cloned)."""
  return path if os.path.isabs(path) else os.path.join(REPO_ROOT, path)


def read_manifest(directory: str) -> dict:
  path = os.path.join(directory, MANIFEST)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: missing; {directory} is not a directory of shipped parts "
                            "(tools/ship_pretrained.py writes one)")
  with open(path) as f:
    return json.load(f)


def resolve(path: str, tokenizer_config, parts=PARTS, section: str = "config.tokenizer") -> str:
  """The directory of shipped parts at `path`, after checking that it holds every part and
  that they were trained with `tokenizer_config` (the config's `section`); raises, naming the
  difference, otherwise."""
  directory = directory_of(path)
  manifest = read_manifest(directory)
  want = config_sha256(tokenizer_config)
  if manifest.get("config_sha256") != want:
    changed = sorted(_differences(canonical(manifest.get("config", {})),
                                  canonical(tokenizer_config)))
    raise ValueError(
        f"{section} (sha256 {want[:12]}) is not the config the parts in {directory} were "
        f"trained with (sha256 {str(manifest.get('config_sha256'))[:12]}); differing keys: "
        f"{changed[:8]}. Train them with --config.pretrained={NONE}, or ship new ones with "
        "tools/ship_pretrained.py")
  for part in parts:
    if not os.path.isdir(os.path.join(directory, part)):
      raise FileNotFoundError(f"{os.path.join(directory, part)}: missing from the shipped parts")
  return directory


def weights_digest(directory: str, part: str) -> str:
  """sha256 of a shipped part's weights and model config: the same for the same weights however
  often they are shipped, so a workdir's phases are reused exactly when the parts they were made
  with are still the parts shipped."""
  import jax
  import numpy as np

  from unimodal_jax import checkpoints
  source = os.path.join(directory, part)
  params, stored_config = checkpoints.restore_params(source)
  h = hashlib.sha256(json.dumps(stored_config, sort_keys=True, default=str).encode())
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params)[0],
                           key=lambda kv: jax.tree_util.keystr(kv[0])):
    leaf = np.asarray(leaf)
    h.update(f"{jax.tree_util.keystr(path)}{leaf.dtype}{leaf.shape}".encode())
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()


def _differences(a, b, prefix="") -> set[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    out = set()
    for k in set(a) | set(b):
      out |= _differences(a.get(k), b.get(k), f"{prefix}{k}.")
    return out
  return set() if a == b else {prefix.rstrip(".")}


def ship(workdir: str, out: str, tokenizer_config, *, figures: dict, command: str,
         parts=PARTS) -> dict:
  """Copy the trained parts of `workdir` (a train/tokenizer.py workdir) into `out`: params and
  model config only (no optimizer state, no data iterator), with MANIFEST.json. Returns the
  manifest."""
  import datetime
  import shutil
  import subprocess

  import jax
  import numpy as np

  from unimodal_jax import checkpoints
  if os.path.exists(out):
    raise FileExistsError(f"{out}: exists; remove it (git keeps the old parts) and ship again")
  shipped = {}
  for part in parts:
    source = os.path.join(workdir, part)
    _, params = checkpoints.load_pretrained(source)
    stored_config = checkpoints.read_model_config(source)  # with its provenance
    params = jax.tree.map(np.asarray, params)
    checkpoints.save_pretrained(os.path.join(out, part), params, stored_config)
    for name in EXTRA_FILES:
      if os.path.exists(os.path.join(source, name)):
        shutil.copy(os.path.join(source, name), os.path.join(out, part, name))
    shipped[part] = {"kind": stored_config.get("kind"),
                   "num_params": int(sum(x.size for x in jax.tree.leaves(params))),
                   "bytes": _bytes(os.path.join(out, part))}
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                            text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    commit = "unknown"
  manifest = {
      "config_sha256": config_sha256(tokenizer_config),
      "config": tokenizer_config.to_dict(),
      "command": command, "figures": figures, "parts": shipped,
      "made": datetime.date.today().isoformat(), "commit": commit,
  }
  with open(os.path.join(out, MANIFEST), "w") as f:
    json.dump(manifest, f, indent=2, sort_keys=True)
  return manifest


def _bytes(directory: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(directory)
             for f in files)


__all__ = ["MANIFEST", "PARTS", "DREAMLLM_PARTS", "NONE", "ADDED_AT_DEFAULT", "canonical", "config_sha256", "resolve", "read_manifest", "ship",
           "directory_of", "weights_digest"]
