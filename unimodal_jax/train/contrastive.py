"""Train a small CLIP on the built-in worlds, then score it zero-shot.

    python -m unimodal_jax.train.contrastive --config=experiments/tiny/clip_shapes.py --workdir=DIR

Data: captioned images of the shapes world (`shapes.make_document(seed, i, "caption")`) and of
the digits world (`digits.document(i, task="caption")`, its 'train' split), rendered at the
vision tower's image size, captions tokenized by a sentencepiece model trained on those captions
(written to DIR/tokenizer.model). Batches mix the two worlds: part drawn without replacement
each epoch, part (`train.hard_negative_fraction`) in groups of captions that differ only in
their shape words, without which no shape is learned (see BatchSampler). The loss is the
symmetric InfoNCE; identical captions in a batch (the worlds repeat short captions such as "the
digit 3") and repeated images count as positives of each other.

Zero-shot evaluation (no training signal from the labels; prompts are text in the captions'
style, and each class is the normalized mean of its prompts' unit text embeddings, CLIP's prompt
ensembling; an image gets the class of highest cosine similarity):
  * shape, color: held-out single-object scenes, the single-object documents of the shapes
    stream `data.eval_seed` (training uses `data.shapes_seed`). The prompts for a shape are
    that shape in every color and size, in three caption styles ("a red circle", "a photo of a
    small red circle", "one shape: a red circle"); for a color, every shape and size likewise.
  * count: every held-out scene (1 to 4 objects); the prompts for n are the count phrase with
    which captions open, "n shape(s): ", followed by the object listing of each of
    `eval.count_prompt_scenes` random scenes of n objects (from yet another seed), so that the
    content averages out and the count remains.
  * digit: the digits world's 'judge_test' split (never trained on); the prompts for a digit are
    the world's four caption templates.
Chance (1 / classes) and the majority-class rate of each eval set are reported beside them.

Training goes through the one loop (train/fit.py): DIR/checkpoints holds its checkpoints (model
config "kind": "clip"; `load_pretrained(DIR)` returns the CLIP), a killed run resumes with the
next batch, and a finished one is not trained again. Progress goes to the terminal;
DIR/results.json gets the accuracies, baselines, losses and wall times.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
import sys
import time

if __name__ == "__main__":  # before jax is imported, as in unimodal_jax/train/__main__.py
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import flax.linen as nn
import jax
import ml_collections
import jax.numpy as jnp
import numpy as np

from unimodal_jax.train import results as results_lib
from unimodal_jax import checkpoints
from unimodal_jax.data import images as images_lib
from unimodal_jax.data import text_tokenizer, worlds
from unimodal_jax.data.worlds import digits, shapes
from unimodal_jax.models import vit
from unimodal_jax.models.clip import Clip, ClipConfig, contrastive_loss
from unimodal_jax import sharding
from unimodal_jax.data import array_batches
from unimodal_jax.train import fit
from unimodal_jax.train import optimizer as optimizer_lib
from unimodal_jax.train import state as state_lib
from unimodal_jax.train import step as step_lib

EOS_ID = 3  # text_tokenizer.train_sentencepiece fixes pad 0, unk 1, bos 2, eos 3
DATA_FIELDS = ("shapes_seed", "shapes_train", "digits_seed", "digits_train", "eval_seed",
               "shapes_eval", "digits_eval_split")
TRAIN_FIELDS = ("steps", "batch_size", "seed", "log_every", "duplicates_positive",
                "hard_negative_fraction", "hard_negative_group", "hard_negative_words",
                "checkpoint_every", "keep_checkpoints", "max_consecutive_nonfinite",
                "async_checkpointing")
EVAL_FIELDS = ("every", "batch_size", "count_prompt_scenes")
MAX_COUNT = 4  # shapes.sample_scene's default max_objects
# Words that name a class, by kind: captions that differ only in such words are hard negatives
# (config.train.hard_negative_words picks the kinds).
CLASS_WORDS = {"shape": shapes.SHAPES + tuple(shapes.PLURALS.values()),
               "digit": digits.WORDS + tuple(str(d) for d in range(10))}
SHAPE_TEMPLATES = ("{phrase}", "a photo of {sized}", "one shape: {phrase}")


@dataclasses.dataclass
class Split:
  images: np.ndarray  # uint8 [N, S, S, 3]
  captions: list[str]
  image_ids: np.ndarray  # int [N]: equal ids mean the same picture
  labels: dict  # name -> int array [N] (-1: not evaluated on this example)


# ----------------------------------------------------------------------------- data


def shapes_split(seed: int, count: int, size: int) -> Split:
  """`count` caption documents of the shapes stream `seed`, with their scenes' labels: shape and
  color (single-object scenes; -1 otherwise) and the object count."""
  ims, caps, shape, color, n_objects = [], [], [], [], []
  for i in range(count):
    doc = worlds.make_document("shapes", "caption", seed, i, size)
    ims.append(images_lib.decode_resize(doc.segments[0].image, size, where=doc.id))
    caps.append(doc.segments[1].text)
    objects = doc.metadata["scene"]["objects"]
    n_objects.append(len(objects))
    single = len(objects) == 1
    shape.append(shapes.SHAPES.index(objects[0]["shape"]) if single else -1)
    color.append(tuple(shapes.COLORS).index(objects[0]["color"]) if single else -1)
  return Split(np.stack(ims), caps, np.arange(count),
               {"shape": np.array(shape), "color": np.array(color),
                "count": np.array(n_objects) - 1})


def digits_split(count: int, split_name: str, size: int, seed: int, id_offset: int) -> Split:
  """`count` caption documents of a digits split (indices wrap around the split, so the same
  scan comes back with other captions)."""
  n_images = len(digits.split(split_name)[1])
  ims, caps, labels = [], [], []
  for i in range(count):
    doc = worlds.make_document("digits", "caption", seed, i, size, split_name)
    ims.append(images_lib.decode_resize(doc.segments[0].image, size, where=doc.id))
    caps.append(doc.segments[1].text)
    labels.append(doc.metadata["label"])
  return Split(np.stack(ims), caps, id_offset + np.arange(count) % n_images,
               {"digit": np.array(labels)})


def train_tokenizer(captions, path: str, vocab_size: int, log=print):
  """A sentencepiece model of at most `vocab_size` pieces (the text tower's table size).

  BPE, because the worlds speak a closed vocabulary of a few dozen words: BPE merges them into
  whole-word pieces, where a unigram model of a few hundred pieces (256 of them byte fallbacks)
  splits words into letters. Sentencepiece refuses to make more pieces than its corpus supports;
  then it is retrained with the most it accepts, and the table's surplus rows stay unused.
  """
  train = functools.partial(text_tokenizer.train_sentencepiece, model_type="bpe")
  try:
    return train(captions, path, vocab_size), vocab_size
  except RuntimeError as e:
    found = re.search(r"Vocabulary size too high .*<= (\d+)", str(e))
    if not found:
      raise
    fitted = int(found.group(1))
    log(f"tokenizer: the captions support {fitted} pieces, fewer than model.text.vocab_size="
        f"{vocab_size}; using {fitted}")
    return train(captions, path, fitted), fitted


def tokenize(sp, texts, max_len: int, where: str) -> np.ndarray:
  """Texts -> int32 [N, max_len]: pieces, EOS, right-padded with 0. A text that does not fit is
  an error (a cut caption would lose its EOS and meaning)."""
  out = np.zeros((len(texts), max_len), np.int32)
  for i, ids in enumerate(sp.encode(list(texts))):
    ids = list(ids) + [EOS_ID]
    if len(ids) > max_len:
      raise ValueError(f"{where}: {texts[i]!r} is {len(ids)} tokens with EOS, more than "
                       f"model.text.max_len={max_len}")
    out[i, :len(ids)] = ids
  return out


# ----------------------------------------------------------------------------- batches


def hard_negative_groups(captions, words) -> list[np.ndarray]:
  """Indices of captions grouped by their text with `words` blanked out, keeping the groups
  whose captions are not all the same: "a red circle" and "a red cross" fall together, and so do
  "the digit 3" and "the digit 8"."""
  pattern = re.compile(r"\b(" + "|".join(sorted(words, key=len, reverse=True)) + r")\b")
  by_key: dict[str, list[int]] = {}
  for i, caption in enumerate(captions):
    by_key.setdefault(pattern.sub("_", caption), []).append(i)
  return [np.array(members) for members in by_key.values()
          if len({captions[i] for i in members}) > 1]


class BatchSampler:
  """Example indices for each batch: epochs of a random permutation, except that a share
  (`hard_fraction`) of each batch is made of hard-negative groups (`hard_negative_groups`), up to
  `group_size` examples from each group drawn.

  Why: in these worlds color, count and size already tell almost every caption in a random batch
  apart, so the InfoNCE gradient to see shape is faint; and while the image tower is blind to
  shape, the text tower's best answer is to merge "a red circle" with "a red square", which
  leaves the image tower no shape gradient either. Measured with random batches only (1,500
  steps): zero-shot color 1.00, count 0.51, digit 0.88, but shape 0.20, at chance, with the text
  embeddings of "a red <shape>" at cosine 0.99 to each other; the same ViT learns shape to 94% in
  800 steps when supervised with labels. Groups of captions that differ only in class words
  leave nothing else to match on. The groups come from caption text alone, not from labels.
  """

  def __init__(self, captions, batch: int, seed: int, hard_fraction: float = 0.0,
               group_size: int = 8, words=CLASS_WORDS["shape"]):
    if not 0.0 <= hard_fraction < 1.0:
      raise ValueError(f"config.train.hard_negative_fraction={hard_fraction}; expected [0, 1)")
    if group_size < 2:
      raise ValueError(f"config.train.hard_negative_group={group_size}; expected >= 2")
    self.rng = np.random.default_rng(seed)
    self.n, self.batch, self.group_size = len(captions), batch, group_size
    self.n_hard = int(round(hard_fraction * batch))
    if self.n_hard and not words:
      raise ValueError("config.train.hard_negative_fraction > 0 needs "
                       "config.train.hard_negative_words")
    self.groups = hard_negative_groups(captions, words) if self.n_hard else []
    if self.n_hard and not self.groups:
      raise ValueError("config.train.hard_negative_fraction > 0, but no two training captions "
                       "differ only in the words of config.train.hard_negative_words")
    # A group is drawn with probability proportional to its size, as if drawing an example and
    # taking its group: the large single-object groups ("a red _") come up most.
    sizes = np.array([len(g) for g in self.groups], np.float64)
    self.group_p = sizes / sizes.sum() if len(sizes) else None
    self.order, self.cursor = self.rng.permutation(self.n), 0

  def next(self) -> np.ndarray:
    hard: list[int] = []
    while len(hard) < self.n_hard:
      group = self.groups[self.rng.choice(len(self.groups), p=self.group_p)]
      hard.extend(self.rng.choice(group, min(self.group_size, len(group)), replace=False))
    k = self.batch - self.n_hard
    if self.cursor + k > self.n:
      self.order, self.cursor = self.rng.permutation(self.n), 0
    idx = np.concatenate([self.order[self.cursor:self.cursor + k],
                          np.asarray(hard[:self.n_hard], np.int64)])
    self.cursor += k
    return idx


# ----------------------------------------------------------------------------- zero-shot prompts


def shape_prompts() -> list[list[str]]:
  return [[t.format(phrase=shapes.noun_phrase(1, c, s), sized=shapes.noun_phrase(1, z, c, s))
           for c in shapes.COLORS for z in shapes.SIZES for t in SHAPE_TEMPLATES]
          for s in shapes.SHAPES]


def color_prompts() -> list[list[str]]:
  return [[t.format(phrase=shapes.noun_phrase(1, c, s), sized=shapes.noun_phrase(1, z, c, s))
           for s in shapes.SHAPES for z in shapes.SIZES for t in SHAPE_TEMPLATES]
          for c in shapes.COLORS]


def count_prompts(scenes_per_count: int, seed: int) -> list[list[str]]:
  """For n = 1..MAX_COUNT: "n shape(s): <listing>" over random n-object scenes (captions'
  count-first form, shapes.captions()[3])."""
  rng = np.random.default_rng([seed, 7])
  out = []
  for n in range(1, MAX_COUNT + 1):
    prompts = []
    for _ in range(scenes_per_count):
      scene = shapes.sample_scene(rng, 64, n, n)
      prompts.append(shapes.captions(scene, rng)[3])
    out.append(prompts)
  return out


def digit_prompts() -> list[list[str]]:
  return [[t.format(d=d, w=digits.WORDS[d]) for t in digits.TEMPLATES] for d in range(10)]


# ----------------------------------------------------------------------------- run


def _check_fields(config, known, name):
  if name not in config:
    raise ValueError(f"config.{name} is missing (fields {sorted(known)})")
  section = config[name]
  unknown = sorted(set(section.keys()) - set(known))
  if unknown:
    raise ValueError(f"config.{name}: unknown field(s) {unknown}; known: {sorted(known)}")
  missing = sorted(set(known) - set(section.keys()))
  if missing:
    raise ValueError(f"config.{name}: missing field(s) {missing}")


def run(config, workdir: str, *, log=print) -> dict:
  """Train as `config` says, evaluate zero-shot, write DIR/results.json and the checkpoint."""
  wall_start = time.time()
  for name, known in (("data", DATA_FIELDS), ("train", TRAIN_FIELDS), ("eval", EVAL_FIELDS)):
    _check_fields(config, known, name)
  model_cfg = ClipConfig.from_dict(config.model.to_dict())
  data_cfg, train_cfg = config.data, config.train
  ckpt_dir = os.path.join(os.path.abspath(workdir), checkpoints.TRAIN_SUBDIR)
  os.makedirs(workdir, exist_ok=True)
  size, max_len = model_cfg.vision.image_size, model_cfg.text.max_len

  # Data: render, train the tokenizer on the training captions, tokenize.
  t0 = time.time()
  train_shapes = shapes_split(data_cfg.shapes_seed, data_cfg.shapes_train, size)
  train_digits = digits_split(data_cfg.digits_train, "train", size, data_cfg.digits_seed,
                              id_offset=data_cfg.shapes_train)
  eval_shapes = shapes_split(data_cfg.eval_seed, data_cfg.shapes_eval, size)
  test_images, test_labels = digits.split(data_cfg.digits_eval_split)
  eval_digits = np.stack([digits.render(im, size) for im in test_images])
  train_images = np.concatenate([train_shapes.images, train_digits.images])
  train_captions = train_shapes.captions + train_digits.captions
  image_ids = np.concatenate([train_shapes.image_ids, train_digits.image_ids])
  sp_path, sp_vocab = train_tokenizer(train_captions, os.path.join(workdir, "tokenizer.model"),
                                      model_cfg.text.vocab_size, log)
  sp = text_tokenizer.load(sp_path)
  train_tokens = tokenize(sp, train_captions, max_len, "training caption")
  n_train = len(train_captions)
  data_seconds = time.time() - t0
  log(f"data: {train_shapes.images.shape[0]} shapes + {train_digits.images.shape[0]} digits "
      f"captioned images at {size}px, {len(set(train_captions))} distinct captions, {sp_vocab} "
      f"pieces, longest "
      f"{int((train_tokens != 0).sum(1).max())} tokens; {data_seconds:.1f}s")

  # Model, optimizer and the train state (on one device).
  model = Clip(model_cfg)
  total_steps, batch = int(train_cfg.steps), int(train_cfg.batch_size)
  if batch > n_train:
    raise ValueError(f"config.train.batch_size={batch} exceeds the {n_train} training examples")
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  abstract_params = nn.meta.unbox(sharding.abstract_params(model, model_cfg))
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_params))
  tx, schedules = optimizer_lib.build(config.optimizer.to_dict(), abstract_params, total_steps)
  abstract_state, state_sh = state_lib.state_shardings(model, model_cfg, tx, mesh)
  log(f"model: {num_params / 1e6:.2f}M params (vision {model_cfg.vision.num_layers} layers x "
      f"{model_cfg.vision.hidden_size}, {model_cfg.vision.seq_len} tokens; text "
      f"{model_cfg.text.num_layers} x {model_cfg.text.hidden_size}); {total_steps} steps of "
      f"{batch}")
  duplicates_positive = bool(train_cfg.duplicates_positive)

  def loss_fn(p, model_state, b, rng):
    del rng
    images, tokens, ids = b["images"], b["tokens"], b["ids"]
    image_emb, text_emb, scale = model.apply({"params": p}, vit.normalize(images), tokens)
    positives = None
    if duplicates_positive:
      positives = jnp.all(tokens[:, None] == tokens[None], -1) | (ids[:, None] == ids[None])
    loss, metrics = contrastive_loss(image_emb, text_emb, scale, positives)
    return loss, (dict(metrics, scale=scale), model_state)

  batch_sh = sharding.batch_sharding(mesh, ndim=1)  # rows over the batch axes, any rank
  train_step = jax.jit(step_lib.make_loss_step(loss_fn, tx, schedules),
                       in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, None),
                       donate_argnums=(0,))

  # Zero-shot evaluation (every eval.every steps if > 0, and at the end).
  eval_batch = int(config.eval.batch_size)
  encode_image = jax.jit(lambda p, x: model.apply({"params": p}, vit.normalize(x),
                                                  method=Clip.encode_image))
  encode_text = jax.jit(lambda p, t: model.apply({"params": p}, t, method=Clip.encode_text))
  prompts = {"shape": shape_prompts(), "color": color_prompts(),
             "count": count_prompts(int(config.eval.count_prompt_scenes), data_cfg.eval_seed),
             "digit": digit_prompts()}
  eval_sets = {"shape": (eval_shapes.images, eval_shapes.labels["shape"]),
               "color": (eval_shapes.images, eval_shapes.labels["color"]),
               "count": (eval_shapes.images, eval_shapes.labels["count"]),
               "digit": (eval_digits, np.asarray(test_labels))}

  def batched(fn, p, inputs):
    """fn over `inputs` in chunks of eval_batch, the last one padded: one compilation."""
    out = []
    for i in range(0, len(inputs), eval_batch):
      chunk = inputs[i:i + eval_batch]
      pad = np.repeat(chunk[:1], eval_batch - len(chunk), axis=0)
      out.append(np.asarray(fn(p, np.concatenate([chunk, pad])))[:len(chunk)])
    return np.concatenate(out)

  def class_embeddings(p, prompt_sets):
    emb = batched(encode_text, p, tokenize(sp, sum(prompt_sets, []), max_len, "prompt"))
    out, start = [], 0
    for group in prompt_sets:
      mean = emb[start:start + len(group)].mean(0)
      start += len(group)
      out.append(mean / np.linalg.norm(mean))
    return np.stack(out)

  def evaluate(p) -> dict:
    image_emb = {"shapes": batched(encode_image, p, eval_shapes.images),
                 "digits": batched(encode_image, p, eval_digits)}
    out = {}
    for name, (_, labels) in eval_sets.items():
      keep = labels >= 0
      emb = image_emb["digits" if name == "digit" else "shapes"][keep]
      predicted = np.argmax(emb @ class_embeddings(p, prompts[name]).T, axis=1)
      truth = labels[keep]
      counts = np.bincount(truth, minlength=len(prompts[name]))
      out[name] = {"accuracy": float(np.mean(predicted == truth)), "n": int(keep.sum()),
                   "chance": 1.0 / len(prompts[name]),
                   "majority": float(counts.max() / counts.sum())}
    return out

  # Train (train/fit.py: resumable, the non-finite policy, progress, checkpoints).
  kinds = [k.strip() for k in str(train_cfg.hard_negative_words).split(",") if k.strip()]
  unknown = sorted(set(kinds) - set(CLASS_WORDS))
  if unknown:
    raise ValueError(f"config.train.hard_negative_words: unknown kind(s) {unknown}; expected "
                     f"a comma-separated subset of {sorted(CLASS_WORDS)}")
  sampler = BatchSampler(train_captions, batch, int(train_cfg.seed),
                         float(train_cfg.hard_negative_fraction),
                         int(train_cfg.hard_negative_group),
                         sum((CLASS_WORDS[k] for k in kinds), ()))
  log(f"batches: {sampler.n_hard} of {batch} from {len(sampler.groups)} groups of captions "
      f"that differ only in {'/'.join(kinds) or 'no'} words; the rest drawn without replacement")
  batches = array_batches.batches(
      {"images": train_images, "tokens": train_tokens, "ids": image_ids},
      [sampler.next() for _ in range(total_steps)])
  eval_every = int(config.eval.every) or total_steps
  eval_history, last_eval = [], {}

  def evaluate_during_training(p):
    t_eval = time.time()
    last_eval.clear()
    last_eval.update(evaluate(p))
    accuracies = {k: v["accuracy"] for k, v in last_eval.items()}
    eval_history.append(dict(accuracies, seconds=time.time() - t_eval))
    return accuracies

  trainable = fit.Trainable(
      abstract_state=abstract_state,
      # The init key is the seed's own (not split from it), as this trainer always drew it.
      init_state=lambda: state_lib.init_state(model, model_cfg, tx, int(train_cfg.seed),
                                              state_sh, init_rng=jax.random.key(
                                                  int(train_cfg.seed))),
      train_step=train_step, batches=batches, batch_sharding=batch_sh,
      model_config=model_cfg.to_dict(), config=config, evaluate=evaluate_during_training,
      items_per_step=batch, unit="ex", shown=("accuracy_i2t", "accuracy_t2i", "scale"),
      eval_note=lambda m: "zero-shot " + ", ".join(f"{k} {v:.3f}" for k, v in m.items()),
      describe=f"training the CLIP in {workdir}")
  train_cfg_for_fit = dict(train_cfg.to_dict(), eval_every=eval_every)
  t_train = time.time()
  fitted, state = fit.fit(trainable, ml_collections.ConfigDict(train_cfg_for_fit), workdir,
                          log=log)
  params = state.params
  train_seconds = time.time() - t_train

  t_eval = time.time()
  # The loop evaluated at its last step; a run found complete evaluates here.
  zero_shot = dict(last_eval) if last_eval else evaluate(params)
  eval_seconds = eval_history[-1]["seconds"] if last_eval else time.time() - t_eval
  for name, r in zero_shot.items():
    log(f"zero-shot {name}: {r['accuracy']:.3f} on {r['n']} images (chance {r['chance']:.3f}, "
        f"majority class {r['majority']:.3f})")

  history = [{"step": s, "loss": loss} for s, loss in fitted["loss_history"]]
  results = {
      **fitted,  # status, step, loss_history, rates (the loop's figures)
      "zero_shot": zero_shot,
      "train": {"first_loss": history[0]["loss"] if history else None,
                "final_loss": history[-1]["loss"] if history else None,
                "history": history, "zero_shot_history": eval_history, "steps": total_steps,
                "batch_size": batch, "examples": n_train, "last": fitted["train"]},
      "num_params": num_params,
      "seconds": {"data": data_seconds, "train": train_seconds, "eval": eval_seconds,
                  "wall": time.time() - wall_start},
      "model_config": model_cfg.to_dict(),
      "tokenizer": sp_path,
      "checkpoint": ckpt_dir,
  }
  results_lib.write_json(os.path.join(workdir, "results.json"), results)
  log(f"done in {results['seconds']['wall']:.0f}s (data {data_seconds:.0f}s, train "
      f"{train_seconds:.0f}s, eval {eval_seconds:.0f}s); results in "
      f"{os.path.join(workdir, 'results.json')}")
  return results


def main(argv):
  from absl import app, flags, logging

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None or not _WORKDIR.value:
    raise app.UsageError("--config and --workdir are required")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  try:
    run(_CONFIG.value, _WORKDIR.value)
  except (ValueError, fit.NonFiniteStop) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  from unimodal_jax.config_path import add_experiments_root
  add_experiments_root()  # configs import experiments.*
  from absl import app, flags
  from ml_collections import config_flags

  _CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file (Python)")
  _WORKDIR = flags.DEFINE_string("workdir", None, "directory for the tokenizer, checkpoint and "
                                 "results.json")
  app.run(main)
