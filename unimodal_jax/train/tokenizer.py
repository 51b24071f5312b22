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

The trained CLIP stays in DIR/clip (a rerun, or another config pointing encoder.clip_workdir
at it, reuses it); the tokenizer and pixel decoder are saved in DIR/tokenizer and
DIR/pixel_decoder, with DIR/results.json and DIR/samples.png (rows: original, semantic tokenizer
+ pixel decoder, pixel VQ baseline) at the end.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from unimodal_jax.train import results as results_lib
from unimodal_jax import checkpoints
from unimodal_jax.models import pixel_decoder as pdec
from unimodal_jax.models import pixel_vq
from unimodal_jax.models import vision_tokenizer as vt


def _shapes_images(seed: int, count: int, size: int):
  from unimodal_jax.data import images as images_lib
  from unimodal_jax.data.worlds import shapes
  ims, scenes = [], []
  for i in range(count):
    doc = shapes.make_document(seed, i, "caption", size=size)
    ims.append(images_lib.decode_resize(doc.segments[0].image, size, where=doc.id))
    scenes.append(doc.metadata["scene"])
  return np.stack(ims), scenes


class _World:
  """A world's train and held-out images and its judge: score(images) = the fraction of
  held-out images the judge reads as the originals were (results key `judge_key`)."""

  def __init__(self, data, size: int):
    self.name = str(data.get("world", "shapes"))
    if self.name == "shapes":
      from unimodal_jax.data.worlds import shapes
      from unimodal_jax.eval import shapes_judge
      self.train, _ = _shapes_images(int(data.seed), int(data.train_count), size)
      self.eval, scenes = _shapes_images(int(data.eval_seed), int(data.eval_count), size)
      objects = [shapes.scene_from_description(sc).objects for sc in scenes]
      self.judge_key = "judge_same_objects"
      self._score = lambda images: float(np.mean([
          shapes_judge.same_objects(shapes_judge.detect(im), objs)
          for im, objs in zip(images, objects)]))
    elif self.name == "digits":
      from unimodal_jax.data.worlds import digits
      render = lambda scans: np.stack([digits.render(s, size) for s in scans])
      scans, _ = digits.split("train")
      self.train = render(scans[:int(data.train_count)])
      scans, labels = digits.split("judge_test")
      self.eval, labels = render(scans[:int(data.eval_count)]), labels[:int(data.eval_count)]
      judge = digits.DigitsJudge()
      self.judge_key = "judge_digit_accuracy"
      self._score = lambda images: judge.accuracy(images, labels)
    else:
      raise ValueError(f"config.data.world={self.name!r}; expected 'shapes' or 'digits'")

  def score(self, images) -> float:
    return self._score(np.asarray(images))


def _batches(n, batch, steps, seed):
  """Indices of `steps` batches, reshuffled every epoch, deterministic."""
  rng = np.random.default_rng(seed)
  order, out = np.array([], np.int64), []
  for _ in range(steps):
    if len(order) < batch:
      order = np.concatenate([order, rng.permutation(n)])
    out.append(order[:batch])
    order = order[batch:]
  return out


def _train(name, loss_fn, params, extra, data, cfg, log, seed):
  """Adam over `cfg.steps` batches of `data` (a tuple of arrays indexed together).
  loss_fn(params, extra, batch, rng) -> (loss, (metrics, new_extra))."""
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
      optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, min(100, cfg.steps // 10),
                                         cfg.steps, cfg.learning_rate * 0.1),
      weight_decay=0.0))
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, extra, batch, rng):
    (loss, (metrics, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, extra, batch, rng)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, extra, {**metrics, "loss": loss}

  start = time.time()
  n = len(data[0])
  for i, idx in enumerate(_batches(n, cfg.batch_size, cfg.steps, seed)):
    batch = tuple(jnp.asarray(d[idx]) for d in data)
    params, opt, extra, metrics = step(params, opt, extra, batch, jax.random.key(seed * 7 + i))
    if (i + 1) % cfg.log_every == 0 or i + 1 == cfg.steps:
      m = {k: float(v) for k, v in metrics.items()}
      rate = (i + 1) / (time.time() - start)
      log(f"{name} step {i + 1}/{cfg.steps} | " + " | ".join(
          f"{k} {v:.4f}" for k, v in sorted(m.items())) + f" | {rate:.1f} steps/s")
  return params, extra, time.time() - start


def _save(directory, tree, config_dict):
  checkpoints.save_pretrained(directory, tree, _ConfigDict(config_dict))


def _load_phase(directory, config_dict, log):
  """The tree a previous run saved in `directory` if it was trained with the same config
  (the phase is then skipped: a killed run resumes at the first unfinished phase), else None.
  A directory saved with another config is moved aside, so the retrained phase can be saved."""
  try:
    checkpoints.latest_step(directory)
  except FileNotFoundError:
    return None
  tree, stored = checkpoints.restore_params(directory)
  if stored != json.loads(json.dumps(config_dict)):
    log(f"{directory}: saved with another config; moved it to "
        f"{checkpoints.move_aside(directory)} and training it again")
    return None
  log(f"{os.path.basename(directory)}: reusing the one saved in {directory}")
  return tree


class _ConfigDict:
  """Adapter: save_pretrained stores `config.to_dict()` as the model config."""

  def __init__(self, d):
    self.d = d

  def to_dict(self):
    return self.d


def run(config, workdir: str, *, log=print) -> dict:
  wall = time.time()
  os.makedirs(workdir, exist_ok=True)
  size = int(config.data.image_size)

  # 1. Encoder: a CLIP trained on the worlds (or reused).
  clip_dir = config.encoder.clip_workdir or os.path.join(workdir, "clip")
  if not os.path.isdir(os.path.join(clip_dir, checkpoints.TRAIN_SUBDIR)):
    from ml_collections import config_flags  # noqa: F401 (the CLIP config is a Python file)
    from unimodal_jax.train import contrastive
    import importlib.util
    spec = importlib.util.spec_from_file_location("clip_config", config.encoder.clip_config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    clip_cfg = module.get_config(config.encoder.clip_variant or None)
    log(f"encoder: training a CLIP ({config.encoder.clip_config}) in {clip_dir}")
    contrastive.run(clip_cfg, clip_dir, log=log)
  from unimodal_jax.models import clip as clip_lib, vit
  clip_params, clip_cfg_dict = checkpoints.restore_params(clip_dir)
  clip_cfg = clip_lib.ClipConfig.from_dict(clip_cfg_dict)
  if clip_cfg.vision.image_size != size:
    raise ValueError(f"config.data.image_size={size} differs from the CLIP's "
                     f"{clip_cfg.vision.image_size}")
  tower = vit.VisionTransformer(clip_cfg.vision)
  skip = 1 if clip_cfg.vision.class_token else 0

  @jax.jit
  def features_of(images):
    out = tower.apply({"params": clip_params["vision"]}, vit.normalize(images))
    return out.last_hidden_state[:, skip:].astype(jnp.float32)

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
  variables = nn.meta.unbox(jax.jit(lambda x: tokenizer.init(jax.random.key(0), x))(
      jnp.asarray(train_feats[:2])))
  mutable = "vq_stats" in variables

  def tok_loss(params, stats, batch, rng):
    (feats,) = batch
    v = {"params": params, **({"vq_stats": stats} if mutable else {})}
    if mutable:
      (recon, _, aux), new = tokenizer.apply(v, feats, train=True, mutable=["vq_stats"],
                                             rngs={"vq": rng})
      stats = new["vq_stats"]
    else:
      recon, _, aux = tokenizer.apply(v, feats, train=True)
    rec = vt.feature_reconstruction_loss(recon, feats, tok_cfg)
    metrics = {"cosine": rec["cosine"], "usage": aux["usage"], "perplexity": aux["perplexity"]}
    return rec["loss"] + aux["loss"], (metrics, stats)

  tok_dir, tok_meta = os.path.join(workdir, "tokenizer"), {
      "kind": "semantic_tokenizer", **dataclasses.asdict(tok_cfg),
      "train": config.tokenizer_train.to_dict(), "data": config.data.to_dict()}
  tok_vars, tok_seconds = _load_phase(tok_dir, tok_meta, log), 0.0
  if tok_vars is None:
    tok_params, tok_stats, tok_seconds = _train(
        "tokenizer", tok_loss, variables["params"], variables.get("vq_stats", {}),
        (train_feats,), config.tokenizer_train, log, seed=1)
    tok_vars = {"params": tok_params, **({"vq_stats": tok_stats} if mutable else {})}
    _save(tok_dir, tok_vars, tok_meta)

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
  pd_params = nn.meta.unbox(decoder.init(jax.random.key(1), jnp.zeros((1, size, size, 3)),
                                         jnp.zeros((1,)), jnp.asarray(train_cond[:1]))["params"])

  def pd_loss(params, extra, batch, rng):
    images, cond = batch
    return pdec.flow_matching_loss(decoder, params, images, cond, rng), ({}, extra)

  pd_dir, pd_meta = os.path.join(workdir, "pixel_decoder"), {
      "kind": "pixel_decoder", **dataclasses.asdict(pd_cfg), "tokenizer": tok_meta,
      "train": config.pixel_train.to_dict()}
  loaded, pd_seconds = _load_phase(pd_dir, pd_meta, log), 0.0
  if loaded is None:
    pd_params, _, pd_seconds = _train("pixel_decoder", pd_loss, pd_params, {},
                                      (train_images, train_cond), config.pixel_train, log, seed=2)
    _save(pd_dir, pd_params, pd_meta)
  else:
    pd_params = loaded

  # 4. Baseline: pixel-reconstruction VQ (off when baseline_train.steps is 0).
  baseline_result = (_train_baseline(config, size, train_images, eval_images, log)
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


def _train_baseline(config, size, train_images, eval_images, log):
  """The pixel-reconstruction VQ tokenizer on the same images: (its held-out reconstructions,
  its figures)."""
  base_cfg = pixel_vq.PixelVQConfig(image_size=size, **config.baseline.to_dict())
  baseline = pixel_vq.PixelVQTokenizer(base_cfg)
  bvars = nn.meta.unbox(baseline.init(jax.random.key(2), jnp.zeros((1, size, size, 3))))
  b_mutable = "vq_stats" in bvars

  def base_loss(params, stats, batch, rng):
    (images,) = batch
    x = pdec.to_unit_range(images)
    v = {"params": params, **({"vq_stats": stats} if b_mutable else {})}
    if b_mutable:
      (recon, _, aux), new = baseline.apply(v, x, train=True, mutable=["vq_stats"],
                                            rngs={"vq": rng})
      stats = new["vq_stats"]
    else:
      recon, _, aux = baseline.apply(v, x, train=True)
    pix = pixel_vq.pixel_loss(recon, x)
    return pix["loss"] + aux["loss"], ({"l1": pix["l1"], "usage": aux["usage"]}, stats)

  b_params, b_stats, b_seconds = _train("pixel_vq", base_loss, bvars["params"],
                                        bvars.get("vq_stats", {}), (train_images,),
                                        config.baseline_train, log, seed=3)
  b_vars = {"params": b_params, **({"vq_stats": b_stats} if b_mutable else {})}
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
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from absl import app, flags
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file")
  _WORKDIR = flags.DEFINE_string("workdir", None, "output directory")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
