"""DreamLLM's image decoder, pretrained as Stable Diffusion is, in miniature: a small U-Net
(models/unet.py) learns text-to-image on the shapes world, conditioned on the frozen CLIP text
tower's per-token states of the prompt, as SD reads its CLIP text encoder's. DreamLLM then
freezes it and learns to condition it with its dream queries' states instead
(models/dreamllm.py), so this is what its drawings can at best look like.

    python -m unimodal_jax.train.diffusion_decoder --config=experiments/tiny/dreamllm_shapes.py \
        --workdir=DIR

Data: shapes captions and GenEval-style prompts with their scenes (`data.counts`, train seed),
at `data.image_size` px, folded into `pixel_patch` x `pixel_patch` blocks (the U-Net's
"latents", models/dreamllm.fold_pixels). The condition is dropped (replaced by the empty
prompt's states) with probability `cond_dropout`, for classifier-free guidance. Trains through
the one loop (train/array_fit.py, resumable) in DIR/diffusion_decoder; evaluation: held-out
GenEval-style prompts drawn with CFG and scored by the judge (`geneval`: the decoder's own
text-to-image, the ceiling of what DreamLLM draws through it), DIR/diffusion_decoder/samples.png.
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from unimodal_jax import checkpoints
from unimodal_jax.diffusion import schedules
from unimodal_jax.models import build
from unimodal_jax.models import clip as clip_lib
from unimodal_jax.models import dreamllm
from unimodal_jax.models import unet as unet_lib
from unimodal_jax.models import vae as vae_lib
from unimodal_jax.train import array_fit
from unimodal_jax.train import results as results_lib

CLIP_TOKENIZER = "tokenizer.model"  # beside the CLIP's checkpoint (train/contrastive.py)


class TextEncoder:
  """The frozen CLIP text tower: prompts -> per-token final-norm states [N, max_len, width]."""

  def __init__(self, clip_dir: str):
    from unimodal_jax.data import text_tokenizer
    path = os.path.join(clip_dir, CLIP_TOKENIZER)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: the CLIP's text tokenizer is missing (train/contrastive.py "
                              "writes it beside the checkpoint)")
    self.sp = text_tokenizer.load(path)
    params, cfg = checkpoints.restore_params(clip_dir)
    self.config = clip_lib.ClipConfig.from_dict(cfg).text
    tower = clip_lib.TextTransformer(self.config)
    self._states = jax.jit(lambda t: tower.apply({"params": params["text"]}, t, pool=False))

  @property
  def width(self) -> int:
    return self.config.hidden_size

  @property
  def max_len(self) -> int:
    return self.config.max_len

  def fits(self, text: str) -> bool:
    return len(self.sp.encode(text)) + 1 <= self.max_len

  def __call__(self, texts, chunk: int = 512) -> np.ndarray:
    from unimodal_jax.train import contrastive
    tokens = contrastive.tokenize(self.sp, list(texts), self.max_len, "diffusion decoder prompt")
    return np.concatenate([np.asarray(self._states(jnp.asarray(tokens[i:i + chunk])))
                           for i in range(0, len(tokens), chunk)]).astype(np.float32)


def unet_config(config, text_width: int) -> unet_lib.UNetConfig:
  """The U-Net from `config` (the experiment's diffusion_decoder section): its sample is the
  folded image, its cross-attention reads the text tower's states."""
  size, patch = int(config.data.image_size), int(config.pixel_patch)
  return unet_lib.UNetConfig(**{**config.unet.to_dict(), "sample_size": size // patch,
                                "in_channels": 3 * patch * patch,
                                "out_channels": 3 * patch * patch,
                                "cross_attention_dim": text_width})


def _pairs(data, seed: int, log):
  """(prompts, uint8 images) of shapes captions and GenEval-style prompts."""
  from unimodal_jax.data import images as images_lib
  from unimodal_jax.data.worlds import geneval, shapes
  size = int(data.image_size)
  texts, images = [], []
  for i in range(int(data.counts.caption)):
    d = shapes.make_document(seed, i, "caption", size=size)
    texts.append(d.segments[1].text)
    images.append(images_lib.decode_resize(d.segments[0].image, size, where=d.id))
  for i in range(int(data.counts.geneval)):
    d = geneval.make_document(seed, i, size=size)
    texts.append(d.segments[0].text)
    images.append(images_lib.decode_resize(d.segments[1].image, size, where=d.id))
  return texts, np.stack(images)


def draw(unet, params, schedule_cfg, patch: int, cond, uncond, rng, *, steps: int,
         guidance: float, batch: int = 64) -> np.ndarray:
  """uint8 images from text states cond [N, T, W] (uncond the empty prompt's, [1, T, W])."""
  schedule = schedule_cfg.make()
  side = unet.config.sample_size

  @jax.jit
  def run(c, key):
    noise = jax.random.normal(key, (c.shape[0], side, side, unet.config.in_channels))
    u = jnp.broadcast_to(uncond, c.shape)
    x = schedules.sample(lambda x, t, k: unet.apply({"params": params}, x, t, k), schedule,
                         noise, c, u, sampler="ddim", num_steps=steps, guidance_scale=guidance)
    return vae_lib.to_uint8(dreamllm.unfold_pixels(x, patch))

  out = []
  for i in range(0, len(cond), batch):
    c = cond[i:i + batch]
    n = len(c)
    if n < batch:  # one compilation: the last chunk padded
      c = np.concatenate([c, np.repeat(c[:1], batch - n, 0)])
    out.append(np.asarray(run(jnp.asarray(c), jax.random.fold_in(rng, i)))[:n])
  return np.concatenate(out)


def evaluate(unet, params, config, text_encoder, log=print) -> tuple[dict, list, np.ndarray]:
  """GenEval-style scores of the decoder's own text-to-image on held-out prompts."""
  from unimodal_jax.pipeline import evaluate as evaluate_lib
  from unimodal_jax.data.worlds import geneval
  e = config.eval
  prompts = geneval.geneval_prompts(int(config.data.eval_seed), int(e.geneval_per_category))
  cond = text_encoder([p["prompt"] for p in prompts])
  uncond = text_encoder([""])
  images = draw(unet, params, schedules.ScheduleConfig(**config.schedule.to_dict()),
                int(config.pixel_patch), cond, uncond, jax.random.key(int(config.data.eval_seed)),
                steps=int(e.steps), guidance=float(e.guidance))
  scores = evaluate_lib.geneval_scores(prompts, images)
  log("diffusion decoder: GenEval-style " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
  return scores, prompts, images


def run(config, workdir: str, clip_dir: str, *, log=print) -> dict:
  """Train (or resume, or reuse) the decoder in WORKDIR/diffusion_decoder; its figures."""
  wall = time.time()
  out_dir = os.path.join(workdir, "diffusion_decoder")
  text_encoder = TextEncoder(clip_dir)
  ucfg = unet_config(config, text_encoder.width)
  schedule_cfg = schedules.ScheduleConfig(**config.schedule.to_dict())
  patch = int(config.pixel_patch)
  t0 = time.time()
  texts, images = _pairs(config.data, int(config.data.train_seed), log)
  keep = np.asarray([text_encoder.fits(t) for t in texts])
  if not keep.all():  # a counted skip: a prompt the text tower cannot read whole
    log(f"diffusion decoder: skipped {int((~keep).sum())} of {len(texts)} prompts longer than "
        f"the CLIP text tower's {text_encoder.max_len} tokens")
  texts, images = [t for t, k in zip(texts, keep) if k], images[keep]
  states = text_encoder(texts)
  null = text_encoder([""])[0]
  log(f"diffusion decoder: {len(texts)} prompt/image pairs at {images.shape[1]} px, text states "
      f"{states.shape[1:]} in {time.time() - t0:.1f}s")
  unet = unet_lib.UNet(ucfg)
  schedule = schedule_cfg.make()
  dropout = float(config.cond_dropout)

  def loss_fn(params, model_state, batch, rng):
    k_noise, k_t, k_drop = jax.random.split(rng, 3)
    x0 = dreamllm.fold_pixels(dreamllm.to_unit_range(batch["images"]), patch)
    noise = jax.random.normal(k_noise, x0.shape)
    t = jax.random.randint(k_t, (x0.shape[0],), 0, schedule_cfg.num_train_timesteps)
    drop = jax.random.uniform(k_drop, (x0.shape[0], 1, 1)) < dropout
    cond = jnp.where(drop, jnp.asarray(null)[None], batch["text_states"])
    pred = unet.apply({"params": params}, schedules.add_noise(schedule, x0, noise, t), t, cond)
    loss = jnp.mean(jnp.square(pred - schedules.training_target(schedule, x0, noise, t)))
    return loss, ({}, model_state)

  meta = {**ucfg.to_dict(), build.PROVENANCE: {
      "train": config.train.to_dict(), "data": config.data.to_dict(),
      "schedule": schedule_cfg.to_dict(), "pixel_patch": patch,
      "cond_dropout": dropout, "condition": "clip text tower states",
      "text_encoder_digest": clip_digest(clip_dir)}}
  variables, seconds = array_fit.fit_arrays(
      "diffusion decoder", out_dir, unet, ucfg, meta, loss_fn,
      {"images": images, "text_states": states}, config.train, seed=int(config.train.seed),
      init_seed=int(config.train.seed), log=log)
  scores, prompts, drawn = evaluate(unet, variables["params"], config, text_encoder, log)
  from unimodal_jax.pipeline import report
  step = max(1, len(prompts) // 16)
  report.write_samples(os.path.join(out_dir, "samples.png"),
                       [(p["prompt"], im) for p, im in zip(prompts[::step], drawn[::step])], [])
  figures = {"geneval": scores, "pairs": len(texts), "train_seconds": seconds,
             "num_params": int(sum(x.size for x in jax.tree.leaves(variables["params"]))),
             "wall_time_s": time.time() - wall}
  results_lib.write_json(os.path.join(out_dir, "decoder_results.json"), figures)
  return figures


def clip_digest(clip_dir: str) -> str:
  from unimodal_jax import pretrained
  return pretrained.weights_digest(os.path.dirname(os.path.abspath(clip_dir)),
                                   os.path.basename(os.path.abspath(clip_dir)))


def main(argv):
  from absl import logging
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  from unimodal_jax import pretrained
  clip_dir = pretrained.directory_of(str(config.encoder.clip_dir))
  run(config.diffusion_decoder, _WORKDIR.value, clip_dir, log=lambda *a: print(*a, flush=True))


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from unimodal_jax.config_path import add_experiments_root
  add_experiments_root()  # the config imports experiments.*
  from absl import app, flags
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file(
      "config", None, "a DreamLLM main-job config (experiments/tiny/dreamllm_shapes.py): its "
      "`diffusion_decoder` section and `encoder.clip_dir`")
  _WORKDIR = flags.DEFINE_string("workdir", None, "where DIR/diffusion_decoder is trained")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
