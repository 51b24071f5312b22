"""Train ILLUME's semantic vision tokenizer on a built-in world (`data.world`: 'shapes' or
'digits'), end to end on a CPU:

  1. encoder  a small CLIP (train/contrastive.py) gives the semantic features (its ViT's patch
              tokens); trained here unless `encoder.clip_workdir` already holds one
  2. tokenizer features -> VQ ids -> features (smooth-L1 + cosine), the encoder frozen
  3. pixels   the diffusion pixel decoder learns images from the *reconstructed* features
  4. baseline the pixel-reconstruction VQ tokenizer (ILLUME Fig. 6's comparison) on the same images
  5. eval     held-out images: feature cosine, codebook usage/perplexity, and the world's judge
              on detokenize(encode(image)) against the baseline's reconstructions and the
              originals: shapes, does the picture still hold the same objects
              (`judge_same_objects`); digits, does the judge still read the same digit
              (`judge_digit_accuracy`, on the 'judge_test' scans the judge never trained on)

    python -m unimodal_jax.train.tokenizer --config=experiments/tiny/tokenizer_shapes.py --workdir=DIR

Every model trains through the one loop (train/fit.py) in its own directory: DIR/clip,
DIR/tokenizer, DIR/pixel_decoder, DIR/pixel_vq. A rerun (after a kill, say) resumes the model it
was training and reuses the finished ones; one trained with another config is moved aside and
trained again. `load_pretrained(DIR/tokenizer)` (or any of them) returns the model. At the end
DIR/results.json and DIR/samples.png (rows: original, semantic tokenizer + pixel decoder, pixel
VQ baseline).
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from unimodal_jax.train import results as results_lib
from unimodal_jax import checkpoints
from unimodal_jax.models import build
from unimodal_jax.models import image_codec
from unimodal_jax.models import pixel_decoder as pdec
from unimodal_jax.models import pixel_vq
from unimodal_jax.models import vision_tokenizer as vt
from unimodal_jax.train import array_fit


def _caption_images(world: str, seed: int, count: int, size: int, split: str = "train"):
  """(uint8 images [count, size, size, 3], their documents' metadata) of a world's captions; a
  digits split holds each scan once (count is capped at the split's size)."""
  from unimodal_jax.data import images as images_lib, worlds
  if world == "digits":
    count = min(count, worlds.default_count(world, split))
  docs = [worlds.make_document(world, "caption", seed, i, size, split) for i in range(count)]
  return (np.stack([images_lib.decode_resize(d.segments[0].image, size, where=d.id)
                    for d in docs]), [d.metadata for d in docs])


class _World:
  """A world's train and held-out images and its judge: score(images) = the fraction of
  held-out images the judge reads as the originals were (results key `judge_key`)."""

  def __init__(self, data, size: int):
    from unimodal_jax.data import worlds
    self.name = str(data.get("world", "shapes"))
    if self.name not in worlds.WORLDS:
      raise ValueError(f"config.data.world={self.name!r}; expected one of {worlds.WORLDS}")
    if self.name == "shapes":
      from unimodal_jax.data.worlds import shapes
      from unimodal_jax.eval import shapes_judge
      self.train, _ = _caption_images("shapes", int(data.seed), int(data.train_count), size)
      self.eval, meta = _caption_images("shapes", int(data.eval_seed), int(data.eval_count), size)
      objects = [shapes.scene_from_description(m["scene"]).objects for m in meta]
      self.judge_key = "judge_same_objects"
      self._score = lambda images: float(np.mean([
          shapes_judge.same_objects(shapes_judge.detect(im), objs)
          for im, objs in zip(images, objects)]))
    else:
      from unimodal_jax.data.worlds import digits
      self.train, _ = _caption_images("digits", 0, int(data.train_count), size)
      # Held out: the judge's test scans, which neither the judge nor the tokenizer trained on.
      self.eval, meta = _caption_images("digits", 0, int(data.eval_count), size, "judge_test")
      labels = np.asarray([m["label"] for m in meta])
      judge = digits.DigitsJudge()
      self.judge_key = "judge_digit_accuracy"
      self._score = lambda images: judge.accuracy(images, labels)

  def score(self, images) -> float:
    return self._score(np.asarray(images))


def _apply_vq(model, params, stats, x, rng):
  """A VQ model's training forward: (its outputs, its updated `vq_stats`). An EMA codebook
  (stats non-empty) is updated as a side output; a gradient-learned one has no stats."""
  if not stats:
    return model.apply({"params": params}, x, train=True), stats
  outputs, new = model.apply({"params": params, "vq_stats": stats}, x, train=True,
                             mutable=["vq_stats"], rngs={"vq": rng})
  return outputs, new["vq_stats"]


def _completed(workdir: str) -> bool:
  """Did a training run in `workdir` finish (its results.json says so)?"""
  try:
    with open(os.path.join(workdir, "results.json")) as f:
      return json.load(f).get("status") == "completed"
  except FileNotFoundError:
    return False


def run(config, workdir: str, *, log=print) -> dict:
  wall = time.time()
  os.makedirs(workdir, exist_ok=True)
  size = int(config.data.image_size)

  # 1. Encoder: a CLIP trained on the worlds (or reused).
  clip_dir = config.encoder.clip_workdir or os.path.join(workdir, "clip")
  if not _completed(clip_dir):  # trains it, or resumes a killed run
    from unimodal_jax.train import contrastive
    import importlib.util
    from unimodal_jax import pretrained
    spec = importlib.util.spec_from_file_location(
        "clip_config", pretrained.directory_of(config.encoder.clip_config))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    clip_cfg = module.get_config(config.encoder.clip_variant or None)
    log(f"encoder: training a CLIP ({config.encoder.clip_config}) in {clip_dir}")
    contrastive.run(clip_cfg, clip_dir, log=log)
  from unimodal_jax.models import clip as clip_lib
  clip_params, clip_cfg_dict = checkpoints.restore_params(clip_dir)
  clip_cfg = clip_lib.ClipConfig.from_dict(clip_cfg_dict)
  if clip_cfg.vision.image_size != size:
    raise ValueError(f"config.data.image_size={size} differs from the CLIP's "
                     f"{clip_cfg.vision.image_size}")
  layer = int(config.tokenizer.get("encoder_layer", vt.SemanticTokenizerConfig.encoder_layer))

  @jax.jit
  def features_of(images):
    return image_codec.encoder_features(clip_cfg.vision, clip_params["vision"], images, layer)

  def all_features(images):
    return np.concatenate([np.asarray(features_of(images[i:i + 256]))
                           for i in range(0, len(images), 256)])

  # Data: the world's train and held-out images.
  t0 = time.time()
  world = _World(config.data, size)
  train_images, eval_images = world.train, world.eval
  train_feats, eval_feats = all_features(train_images), all_features(eval_images)
  log(f"data: {world.name}, {len(train_images)} train / {len(eval_images)} held-out images at "
      f"{size}px; features {train_feats.shape[1:]} in {time.time() - t0:.1f}s")

  # 2. Semantic tokenizer.
  tok_cfg = vt.SemanticTokenizerConfig(feature_dim=train_feats.shape[-1],
                                       num_tokens=train_feats.shape[1],
                                       **config.tokenizer.to_dict())
  tokenizer = vt.SemanticTokenizer(tok_cfg)

  def tok_loss(params, stats, batch, rng):
    feats = batch["features"]
    (recon, _, aux), stats = _apply_vq(tokenizer, params, stats.get("vq_stats", {}), feats, rng)
    rec = vt.feature_reconstruction_loss(recon, feats, tok_cfg)
    metrics = {"cosine": rec["cosine"], "usage": aux["usage"], "perplexity": aux["perplexity"]}
    return rec["loss"] + aux["loss"], (metrics, {"vq_stats": stats} if stats else {})

  # The model config, and how it was trained (load_pretrained ignores the provenance).
  tok_dir, tok_meta = os.path.join(workdir, "tokenizer"), {
      **tok_cfg.to_dict(), build.PROVENANCE: {"train": config.tokenizer_train.to_dict(),
                                              "data": config.data.to_dict()}}
  tok_vars, tok_seconds = array_fit.fit_arrays(
      "tokenizer", tok_dir, tokenizer, tok_cfg, tok_meta, tok_loss, {"features": train_feats},
      config.tokenizer_train, seed=1, init_seed=0, log=log,
      shown=("cosine", "usage", "perplexity"))

  @jax.jit
  def encode(feats):
    return tokenizer.apply(tok_vars, feats, method=vt.SemanticTokenizer.encode)

  @jax.jit
  def decode(ids):
    return tokenizer.apply(tok_vars, ids, method=vt.SemanticTokenizer.decode_features)

  def recon_features(feats):
    return np.concatenate([np.asarray(decode(encode(feats[i:i + 256])))
                           for i in range(0, len(feats), 256)])

  train_cond = recon_features(train_feats)

  # 3. Pixel decoder on reconstructed features.
  pd_cfg = pdec.PixelDecoderConfig(image_size=size, cond_dim=train_cond.shape[-1],
                                   cond_tokens=train_cond.shape[1],
                                   **config.pixel_decoder.to_dict())
  decoder = pdec.PixelDecoder(pd_cfg)

  def pd_loss(params, model_state, batch, rng):
    loss = pdec.flow_matching_loss(decoder, params, batch["images"], batch["cond"], rng)
    return loss, ({}, model_state)

  pd_dir, pd_meta = os.path.join(workdir, "pixel_decoder"), {
      **pd_cfg.to_dict(), build.PROVENANCE: {"tokenizer": tok_meta,
                                             "train": config.pixel_train.to_dict()}}
  pd_vars, pd_seconds = array_fit.fit_arrays(
      "pixel_decoder", pd_dir, decoder, pd_cfg, pd_meta, pd_loss,
      {"images": train_images, "cond": train_cond}, config.pixel_train, seed=2, init_seed=1,
      log=log)
  pd_params = pd_vars["params"]

  # 4. Baseline: pixel-reconstruction VQ (off when baseline_train.steps is 0).
  baseline_result = (_train_baseline(config, size, train_images, eval_images, workdir, log)
                     if int(config.baseline_train.steps) > 0 else None)

  # 5. Evaluation on held-out images.
  eval_ids = np.asarray(encode(jnp.asarray(eval_feats)))
  eval_cond = recon_features(eval_feats)
  cosine = float(vt.feature_reconstruction_loss(jnp.asarray(eval_cond), jnp.asarray(eval_feats),
                                                tok_cfg)["cosine"])
  counts = np.bincount(eval_ids.ravel(), minlength=tok_cfg.codebook_size) / eval_ids.size
  nz = counts[counts > 0]
  semantic_images = np.concatenate([
      np.asarray(pdec.sample(decoder, pd_params, jnp.asarray(eval_cond[i:i + 64]),
                             jax.random.key(100 + i), steps=int(config.sample.steps),
                             guidance=float(config.sample.guidance)))
      for i in range(0, len(eval_cond), 64)])

  judge = world.score
  results = {
      "world": world.name,
      "semantic_tokenizer": {
          "feature_cosine": cosine,
          "codebook_usage": float(len(nz) / tok_cfg.codebook_size),
          "perplexity": float(np.exp(-(nz * np.log(nz)).sum())),
          world.judge_key: judge(semantic_images),
          "tokens_per_image": int(eval_ids.shape[1]),
          "train_seconds": tok_seconds, "pixel_decoder_seconds": pd_seconds,
      },
      "originals_" + world.judge_key: judge(eval_images),
      "eval_images": len(eval_images),
      "wall_time_s": time.time() - wall,
  }
  rows = [eval_images[:12], semantic_images[:12]]
  if baseline_result is not None:
    baseline_images, results["pixel_vq_baseline"] = baseline_result
    results["pixel_vq_baseline"][world.judge_key] = judge(baseline_images)
    rows.append(baseline_images[:12])
  _save_grid(os.path.join(workdir, "samples.png"), rows)
  results_lib.write_json(os.path.join(workdir, "results.json"), results)
  log(json.dumps(results, indent=2))
  return results


def _train_baseline(config, size, train_images, eval_images, workdir, log):
  """The pixel-reconstruction VQ tokenizer on the same images (in WORKDIR/pixel_vq): (its
  held-out reconstructions, its figures)."""
  base_cfg = pixel_vq.PixelVQConfig(image_size=size, **config.baseline.to_dict())
  baseline = pixel_vq.PixelVQTokenizer(base_cfg)

  def base_loss(params, model_state, batch, rng):
    x = pdec.to_unit_range(batch["images"])
    (recon, _, aux), stats = _apply_vq(baseline, params, model_state.get("vq_stats", {}), x, rng)
    pix = pixel_vq.pixel_loss(recon, x)
    return pix["loss"] + aux["loss"], ({"l1": pix["l1"], "usage": aux["usage"]},
                                       {"vq_stats": stats} if stats else {})

  meta = {**base_cfg.to_dict(), build.PROVENANCE: {"train": config.baseline_train.to_dict(),
                                                   "data": config.data.to_dict()}}
  b_vars, b_seconds = array_fit.fit_arrays(
      "pixel_vq", os.path.join(workdir, "pixel_vq"), baseline, base_cfg, meta, base_loss,
      {"images": train_images}, config.baseline_train, seed=3, init_seed=2, log=log,
      shown=("l1", "usage"))
  x_eval = pdec.to_unit_range(jnp.asarray(eval_images))
  images = np.asarray(pdec.to_uint8(jax.jit(lambda x: baseline.apply(
      b_vars, x, train=False)[0])(x_eval)))
  ids = np.asarray(jax.jit(lambda x: baseline.apply(
      b_vars, x, method=pixel_vq.PixelVQTokenizer.encode))(x_eval))
  return images, {"codebook_usage": float(len(np.unique(ids)) / base_cfg.codebook_size),
                  "tokens_per_image": int(ids.shape[1]), "train_seconds": b_seconds}


def _save_grid(path, rows):
  from PIL import Image
  grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
  Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)


def main(argv):
  from absl import flags, logging
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  from unimodal_jax.config_path import add_experiments_root
  add_experiments_root()  # configs import experiments.*
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from absl import app, flags
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file")
  _WORKDIR = flags.DEFINE_string("workdir", None, "output directory")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
