"""Train (or finish training) a main job's pretrained parts and ship them into the repository.

    python tools/ship_pretrained.py --config=experiments/tiny/illume_shapes.py --workdir=DIR
    python tools/ship_pretrained.py --config=experiments/tiny/dreamllm_shapes.py --workdir=DIR

DreamLLM's config ships its diffusion decoder only (train/diffusion_decoder.py, on the text
states of the CLIP at `encoder.clip_dir`, which ILLUME's shipped parts hold); the rest of this
describes ILLUME's.

Runs the config's tokenizer experiment (`config.tokenizer`: the CLIP, the semantic tokenizer and
the pixel decoder, train/tokenizer.py) in DIR, resuming or reusing what DIR already holds, then
copies the three trained models (params and config only) to `config.pretrained` (or --out) with
a MANIFEST.json: the config and its sha256, this command, the figures measured on the shipped
weights, the date and the commit. The main job then loads them by default
(`--config.pretrained=none` trains them itself instead). Prints one JSON line last: the manifest
without the config.
"""
import json
import os
import shlex
import sys


def main(argv):
  from absl import flags, logging
  from unimodal_jax import pretrained
  from unimodal_jax.train import tokenizer as tokenizer_lib
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  out = _OUT.value or str(config.get("pretrained", pretrained.NONE))
  if out == pretrained.NONE:
    raise SystemExit("error: the config's `pretrained` is 'none'; name the output with --out")
  out = pretrained.directory_of(out)
  if os.path.exists(out) and not _REPLACE.value:
    raise SystemExit(f"error: {out} exists; pass --replace to ship over it")
  log = lambda *a: print(*a, flush=True)
  command = "python tools/ship_pretrained.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
  if str(config.get("model_kind", "illume")) == "dreamllm":
    _ship_dreamllm(config, out, command, log)
    return
  results = tokenizer_lib.run(config.tokenizer, _WORKDIR.value, log=log)
  clip_dir = config.tokenizer.encoder.clip_workdir or os.path.join(_WORKDIR.value, "clip")
  # This call's seconds count only what it had left to do; each part's own results.json has
  # the time its training took.
  figures = {k: v for k, v in results.items() if k != "wall_time_s"}
  for key in ("train_seconds", "pixel_decoder_seconds"):
    figures.get("semantic_tokenizer", {}).pop(key, None)
  figures["training"] = {}
  for part, directory in (("clip", clip_dir), ("tokenizer", os.path.join(_WORKDIR.value, "tokenizer")),
                          ("pixel_decoder", os.path.join(_WORKDIR.value, "pixel_decoder"))):
    path = os.path.join(directory, "results.json")
    if os.path.exists(path):
      with open(path) as f:
        r = json.load(f)
      figures["training"][part] = {k: r[k] for k in ("wall_time_s", "step", "ex_per_s")
                                   if k in r}
      if part == "clip":
        figures["clip"] = r.get("zero_shot", {})
  if os.path.exists(out):
    import shutil
    shutil.rmtree(out)
  manifest = pretrained.ship(_WORKDIR.value, out, config.tokenizer, figures=figures,
                             command=command)
  for part, info in manifest["parts"].items():
    log(f"shipped {part}: {info['num_params']:,} params, {info['bytes'] / 1e6:.2f} MB")
  print(json.dumps({k: v for k, v in manifest.items() if k != "config"}, sort_keys=True))


def _ship_dreamllm(config, out, command, log):
  from unimodal_jax import pretrained
  from unimodal_jax.train import diffusion_decoder
  clip_dir = pretrained.directory_of(str(config.encoder.clip_dir))
  figures = diffusion_decoder.run(config.diffusion_decoder, _WORKDIR.value, clip_dir, log=log)
  # This call's seconds count only what it had left to do; `training` has the training's own.
  figures = {k: v for k, v in figures.items() if k not in ("wall_time_s", "train_seconds")}
  path = os.path.join(_WORKDIR.value, "diffusion_decoder", "results.json")
  if os.path.exists(path):
    with open(path) as f:
      r = json.load(f)
    figures["training"] = {k: r[k] for k in ("wall_time_s", "step", "ex_per_s") if k in r}
  figures["clip"] = str(config.encoder.clip_dir)
  if os.path.exists(out):
    import shutil
    shutil.rmtree(out)
  manifest = pretrained.ship(_WORKDIR.value, out, config.diffusion_decoder, figures=figures,
                             command=command, parts=pretrained.DREAMLLM_PARTS)
  for part, info in manifest["parts"].items():
    log(f"shipped {part}: {info['num_params']:,} params, {info['bytes'] / 1e6:.2f} MB")
  print(json.dumps({k: v for k, v in manifest.items() if k != "config"}, sort_keys=True))


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from unimodal_jax.config_path import add_experiments_root
  add_experiments_root()
  from absl import app, flags
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file("config", None, "the main job's config, e.g. "
                                            "experiments/tiny/illume_shapes.py")
  _WORKDIR = flags.DEFINE_string("workdir", None, "where the parts train (rerun to resume)")
  _OUT = flags.DEFINE_string("out", "", "output directory (default: the config's `pretrained`)")
  _REPLACE = flags.DEFINE_bool("replace", False, "replace an existing output directory")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
