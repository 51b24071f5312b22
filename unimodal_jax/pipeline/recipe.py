"""A main job's recipe as resumable phases in one workdir: ILLUME's
(experiments/tiny/illume_shapes.py) or DreamLLM's (experiments/tiny/dreamllm_shapes.py,
`config.model_kind = "dreamllm"`), which share every phase but the first and the evaluation:

    DIR/tokenizer/        ILLUME: CLIP + semantic tokenizer + pixel decoder (train/tokenizer.py),
                          unless config.pretrained names shipped ones (pretrained.py)
    DIR/parts/            DreamLLM: its encoder and diffusion decoder, when not shipped
                          (pipeline/dreamllm_parts.py)
    DIR/data/             spm.model and one shard directory per task (ILLUME's images to write
                          pre-tokenized into codes; DreamLLM's keep their pixels)
    DIR/stage1..3/        training runs (train/loop.py workdirs)
    DIR/self_assessment/  ILLUME, between stages 2 and 3: the stage-2 model's drawings assessed
                          against their prompts, as dialogues stage 3 reads (alignment/;
                          `config.self_assessment.enabled=False` leaves the phase out)
    DIR/results.{md,json} DIR/samples.png
    DIR/phases.json       each finished phase with its wall time and figures

A phase is skipped when phases.json records it as finished with the same config and its output
is still there; a killed phase restarts (training phases resume from their last checkpoint), and
every phase after one that ran runs too. The recorded configs name paths relative to the workdir
and the repository, so a workdir copied to another machine or directory (or evaluated from
another clone) is still recognized as finished.
"""
from __future__ import annotations

import functools
import json
import os
import re
import time

import ml_collections
import numpy as np

from unimodal_jax.train import results as results_lib

# Every phase in order; DreamLLM's first is "parts", and self_assessment runs only when enabled.
PHASES = ("tokenizer", "data", "stage1", "stage2", "self_assessment", "stage3", "eval")
KINDS = ("illume", "dreamllm")
CONFIG_FILE = "config.json"


class Progress:
  """One display across phases: a header per phase with the overall position and elapsed
  time, and every log line of the phase prefixed with its name."""

  def __init__(self, total: int, log=print):
    self.total, self.log, self.start = total, log, time.time()

  def elapsed(self) -> str:
    s = int(time.time() - self.start)
    return f"{s // 60}m{s % 60:02d}s"

  def phase(self, index: int, name: str, note: str = ""):
    self.log(f"=== [{index}/{self.total}] {name}{' ' + note if note else ''} "
             f"(elapsed {self.elapsed()})")
    return lambda msg, *a, **k: self.log(f"[{index}/{self.total} {name}] {msg}")


def save_config(config, workdir: str) -> None:
  """The config as this run has it (overrides included), as JSON: what unimodal_jax.load builds
  the trained model and its sampling settings from."""
  results_lib.write_json(os.path.join(workdir, CONFIG_FILE), config.to_dict())


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a main job saved in its workdir."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir}: no {CONFIG_FILE}; it was trained before jobs saved "
                            "their config: run the main job on it once more with the same "
                            "--config (finished phases are skipped) to write it")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def _load_phases(workdir):
  path = os.path.join(workdir, "phases.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return {}


def _fingerprint(obj, places: dict[str, str] | None = None) -> str:
  return _relocated(json.dumps(obj, sort_keys=True, default=str), places or {})


def _places(workdir: str) -> dict[str, str]:
  """Where the workdir and the repository are, and the names fingerprints give them."""
  from unimodal_jax import pretrained
  return {os.path.abspath(workdir): "<workdir>", pretrained.REPO_ROOT: "<repo>"}


def _relocated(fingerprint: str, places: dict[str, str]) -> str:
  """`fingerprint` with each absolute path inside a place renamed after the place, so that the
  same config in a moved workdir or another clone reads the same. Longest first: a workdir may
  lie inside the repository. Only whole path components match (/tmp/w is not /tmp/w2)."""
  for path in sorted(places, key=len, reverse=True):
    fingerprint = re.sub(re.escape(path) + r'(?=[/"\\]|$)', places[path], fingerprint)
  return fingerprint


def _texts_for_tokenizer(config):
  """Every kind of text the tasks contain (captions, questions, answers, instructions, prompts)."""
  from unimodal_jax.data.worlds import geneval, shapes
  size = int(config.data.image_size)
  texts = []
  # stories only where the job trains on them (an older workdir's tokenizer stays the same)
  story = ("story",) if "story" in config.data.counts else ()
  for task in ("caption", "conversation", "edit") + story:
    for i in range(1500):
      doc = shapes.make_document(0, i, task, size=size)
      texts += [s.text for s in doc.segments if s.type == "text" and s.text]
  for i in range(600):
    texts += [s.text for s in geneval.make_document(0, i, size=size).segments
              if s.type == "text"]
  return texts + ["USER:", "ASSISTANT:"]


def model_dict(config, codec, text_vocab_size: int) -> dict:
  """The ILLUME model config: the LLM from the config, the vision tower and codebook from the
  trained tokenizer, the vocabulary from the sentencepiece model."""
  from unimodal_jax.data.vocab import SPECIALS
  llm = dict(config.llm.to_dict(), **config.stage_defaults.llm.to_dict())
  llm.update(vocab_size=text_vocab_size + len(SPECIALS))
  return {"kind": "illume", "llm": llm, "vision": codec.vision_config.to_dict(),
          "image_codes": codec.codebook_size, "adapter_hidden": int(config.adapter_hidden),
          "feature_layer": int(config.get("feature_layer", -1)),
          "token_merge": int(config.get("token_merge", 1)),
          "code_positions": codec.tokens_per_image if config.get("code_positions") else 0}


def stage_config(config, name: str, model: dict, data_dir: str, tokenizer_path: str,
                 tokens_per_image: int, init: dict,
                 extra_sources: dict | None = None) -> ml_collections.ConfigDict:
  """A train/loop.py config for one stage: config.stage_defaults with the stage's own steps,
  batch, warm-up, seed and parameter groups (Table 5's frozen parts), data and initialization.
  `extra_sources` ({name: {"path", "weight"}}) adds sources written outside DIR/data."""
  st, defaults = config.stages[name], config.stage_defaults
  steps = int(st.steps)
  c = ml_collections.ConfigDict()
  c.model = model
  c.mesh = defaults.mesh.to_dict()
  c.global_batch = int(st.batch)
  c.seq_len = int(config.seq_len)
  c.data = dict(
      kind="documents", tokenizer=tokenizer_path, vocab_size=int(config.text_vocab_size),
      image_codes=int(model.get("image_codes", 0)), **defaults.data.to_dict(),
      sources={task: {"path": os.path.join(data_dir, task), "weight": float(w)}
               for task, w in st.sources.items()} | dict(extra_sources or {}),
      format=dict(config.format.to_dict(), tokens_per_image=tokens_per_image))
  # config.seed shifts every stage's seed (init of new parts, data order, dropout): the spread
  # of the stages at fixed shipped parts and data.
  c.train = dict(defaults.train.to_dict(), steps=steps,
                 seed=int(st.seed) + 100 * int(config.get("seed", 0)),
                 log_every=max(1, steps // int(defaults.logs_per_stage)), eval_every=steps,
                 checkpoint_every=max(1, steps // int(defaults.checkpoints_per_stage)),
                 init_from=init.get("init_from", ""), init_parts=init.get("init_parts", {}),
                 # DreamLLM's LM and diffusion loss weights, where the stage sets them
                 **{k: float(st[k]) for k in ("lm_loss_weight", "diffusion_loss_weight")
                    if k in st})
  c.optimizer = dict(defaults.optimizer.to_dict(), warmup_steps=int(st.warmup_steps),
                     groups=st.groups.to_dict())
  return c


def _illume_tokenizer(config, workdir, progress, skip, finish, fingerprint):
  """Phase 1 of ILLUME's job: CLIP, semantic VQ, pixel decoder; shipped (pretrained.py) or
  trained here. Returns (the ImageCodec, the CLIP's directory, the tokenizer's directory)."""
  from unimodal_jax import pretrained
  shipped = str(config.get("pretrained", pretrained.NONE))
  if shipped != pretrained.NONE:
    tok_dir = pretrained.resolve(shipped, config.tokenizer)  # raises if trained with another
    clip_workdir = ""
    # The weights themselves: parts shipped again (retrained) make every later phase run again.
    fp = fingerprint([config.tokenizer.to_dict(), tok_dir] + [
        pretrained.weights_digest(tok_dir, part) for part in pretrained.PARTS])
    if not skip(1, "tokenizer", fp, tok_dir):
      lg, t0 = progress.phase(1, "tokenizer", f"(shipped: {shipped})"), time.time()
      manifest = pretrained.read_manifest(tok_dir)
      lg(f"using the parts shipped in {tok_dir} ({manifest['made']}, made by "
         f"{manifest['command']!r})")
      finish("tokenizer", dict(manifest["figures"], pretrained=shipped), t0, fp)
  else:
    tok_dir = os.path.join(workdir, "tokenizer")
    clip_workdir = config.tokenizer.encoder.clip_workdir
    fp = fingerprint(config.tokenizer.to_dict())
    if not skip(1, "tokenizer", fp, tok_dir):
      lg, t0 = progress.phase(1, "tokenizer"), time.time()
      from unimodal_jax.train import tokenizer as tokenizer_lib
      figures = tokenizer_lib.run(config.tokenizer, tok_dir, log=lg)
      finish("tokenizer", figures, t0, fp)
  return (load_codec(config, tok_dir, clip_workdir),
          clip_workdir or os.path.join(tok_dir, "clip"), os.path.join(tok_dir, "tokenizer"))


def load_codec(config, tokenizer_dir: str, clip_workdir: str = ""):
  """The ImageCodec of ILLUME's job: its tokenizer's parts, writing the shapes world's
  background patches as one code per position when config.data.canonical_background (the data
  phase's codes, the ceiling and the self-assessment corrections all tokenize through it)."""
  from unimodal_jax.data.worlds import shapes
  from unimodal_jax.models.image_codec import ImageCodec
  codec = ImageCodec.load(tokenizer_dir, clip_workdir)
  if bool(config.data.get("canonical_background", False)):
    codec.background_rgb = tuple(shapes.BACKGROUND)
  return codec


def finished_illume(config, workdir: str):
  """(codec, sentencepiece, model dict) of a main job's workdir whose data phase has run: what
  tools read a stage's checkpoint with."""
  from unimodal_jax import pretrained
  from unimodal_jax.data import text_tokenizer
  shipped = str(config.get("pretrained", pretrained.NONE))
  if shipped != pretrained.NONE:
    codec = load_codec(config, pretrained.resolve(shipped, config.tokenizer))
  else:
    codec = load_codec(config, os.path.join(workdir, "tokenizer"),
                       config.tokenizer.encoder.clip_workdir)
  sp = text_tokenizer.load(os.path.join(workdir, "data", "spm.model"))
  return codec, sp, model_dict(config, codec, sp.get_piece_size())


def run(config, workdir: str, *, log=print) -> dict:
  kind = str(config.get("model_kind", "illume"))
  if kind not in KINDS:
    raise ValueError(f"config.model_kind={kind!r}; expected one of {KINDS}")
  code_init = str(config.get("code_embedding_init", "normal"))  # ILLUME's image-code rows
  if code_init not in ("normal", "codebook"):
    raise ValueError(f"config.code_embedding_init={code_init!r}: expected 'normal' or "
                     f"'codebook'")
  assessing = kind == "illume" and bool(config.get("self_assessment", {}).get("enabled", False))
  if assessing:
    _check_self_assessment(config)
  first = "parts" if kind == "dreamllm" else "tokenizer"
  names = [first] + [p for p in PHASES[1:] if p != "self_assessment" or assessing]
  number = {name: i + 1 for i, name in enumerate(names)}  # the phases' places in the display
  os.makedirs(workdir, exist_ok=True)
  save_config(config, workdir)
  places = _places(workdir)
  fingerprint = lambda obj: _fingerprint(obj, places)
  # Workdirs written before fingerprints named places hold absolute paths: read them as if
  # they had (they name this workdir, or they are of another config anyway).
  done = {name: dict(phase, config=_relocated(phase["config"], places))
          for name, phase in _load_phases(workdir).items()}
  progress = Progress(len(names), log)
  wall = time.time()

  def finish(name, figures, started, fingerprint):
    done[name] = {"seconds": round(time.time() - started, 1), "config": fingerprint,
                  "figures": figures}
    results_lib.write_json(os.path.join(workdir, "phases.json"), done)

  upstream_ran = False  # once a phase runs, every later one runs too: it reads that output

  def skip(index, name, fingerprint, output):
    nonlocal upstream_ran
    if name in done and done[name]["config"] == fingerprint and not upstream_ran:
      if os.path.exists(output):
        progress.phase(index, name, f"done earlier in {done[name]['seconds']:.0f}s; skipped")
        return True
      log(f"phases.json records {name} as done but {output} is missing; running it again")
    upstream_ran = True
    return False

  # 1. The pretrained parts: ILLUME's tokenizer, or DreamLLM's encoder and diffusion decoder;
  #    shipped (pretrained.py) or trained here.
  if kind == "dreamllm":
    from unimodal_jax.pipeline import dreamllm_parts
    fp = fingerprint(dreamllm_parts.fingerprint_inputs(config))
    parts = dreamllm_parts.locate(config, workdir)
    if not skip(number[first], first, fp, parts.decoder_dir):
      lg, t0 = progress.phase(number[first], first), time.time()
      parts = dreamllm_parts.prepare(config, workdir, lg)
      finish(first, parts.figures, t0, fp)
    tokenize, codec = None, None
  else:
    codec, clip_dir, tokenizer_dir = _illume_tokenizer(config, workdir, progress, skip, finish,
                                                        fingerprint)
    tokenize = codec.tokenize

  # 2. Pre-tokenized data and the text tokenizer.
  data_dir = os.path.join(workdir, "data")
  spm_path = os.path.join(data_dir, "spm.model")
  text_model_type = str(config.get("text_model_type", "unigram"))
  fp = fingerprint([config.data.to_dict(), config.text_vocab_size, text_model_type,
                     done[first]["config"]])
  if not skip(number["data"], "data", fp, spm_path):
    lg, t0 = progress.phase(number["data"], "data"), time.time()
    from unimodal_jax.data import text_tokenizer
    from unimodal_jax.pipeline import pretokenize
    os.makedirs(data_dir, exist_ok=True)
    text_tokenizer.train_sentencepiece(_texts_for_tokenizer(config), spm_path,
                                       int(config.text_vocab_size), model_type=text_model_type)
    counts = {}
    for task, count in config.data.counts.items():
      counts[task] = pretokenize.write_task(os.path.join(data_dir, task), task,
                                            int(config.data.train_seed), int(count),
                                            int(config.data.image_size), tokenize, log=lg)
    finish("data", counts, t0, fp)

  # 3-5. Stages 1-3.
  from unimodal_jax.data import text_tokenizer
  sp = text_tokenizer.load(spm_path)
  if kind == "dreamllm":
    model = dreamllm_parts.model_dict(config, parts, sp.get_piece_size())
    first_init = dreamllm_parts.stage_init(parts)
  else:
    model = model_dict(config, codec, sp.get_piece_size())
    first_init = {"init_parts": {"vision_encoder": clip_dir}}
    if code_init == "codebook":
      from unimodal_jax.train.initialization import CODEBOOK_PART
      first_init["init_parts"][CODEBOOK_PART] = tokenizer_dir
  from unimodal_jax.models import build
  # The slots an image read takes (the model's), not the codes an image written takes.
  tokens_per_image = build.config_from_dict(model).tokens_per_image
  previous, extra = None, {}
  for name in ("stage1", "stage2", "stage3"):
    k = number[name]
    if name == "stage3" and assessing:
      # 5b. Self-assessment data from the stage-2 model's drawings, read by stage 3.
      from unimodal_jax.alignment import self_assessment
      out = os.path.join(workdir, self_assessment.TASK)
      fp = fingerprint([{key: value for key, value in config.self_assessment.items()
                         if key != "weight"},  # the weight is stage 3's business
                        image_sampling(config.eval),
                        done["stage2"]["config"]])
      if not skip(number[self_assessment.TASK], self_assessment.TASK, fp, out):
        lg, t0 = progress.phase(number[self_assessment.TASK], self_assessment.TASK), time.time()
        figures = _self_assessment_data(config, out, previous, model, sp, codec, lg)
        finish(self_assessment.TASK, figures, t0, fp)
      extra = {self_assessment.TASK: {"path": out,
                                      "weight": float(config.self_assessment.weight)}}
    stage_dir = os.path.join(workdir, name)
    init = first_init if previous is None else {"init_from": previous}
    cfg = stage_config(config, name, model, data_dir, spm_path, tokens_per_image, init,
                       extra_sources=extra)
    fp = fingerprint([cfg.to_dict(), done["data"]["config"]] + (
        [done["self_assessment"]["config"]] if extra else []))
    if not skip(k, name, fp, stage_dir):
      lg = progress.phase(k, name, f"({cfg.train.steps} steps of {cfg.global_batch} x "
                                   f"{cfg.seq_len})")
      t0 = time.time()
      from unimodal_jax.train import loop
      # A stage directory of another config (or data) is moved aside and trained again.
      figures = loop.run(cfg, stage_dir, log=lg, run_identity=fp)
      finish(name, {k2: figures.get(k2) for k2 in ("train", "tokens_per_s", "wall_time_s",
                                                   "num_params", "loss_history")}, t0, fp)
    previous = stage_dir

  # 6. Evaluation.
  fp = fingerprint([config.eval.to_dict(), done["stage3"]["config"]])
  if not skip(number["eval"], "eval", fp, os.path.join(workdir, "results.json")):
    lg, t0 = progress.phase(number["eval"], "eval"), time.time()
    if kind == "dreamllm":
      results = dreamllm_parts.evaluate(config, workdir, previous, model, sp, parts,
                                        _load_phases(workdir), lg)
    else:
      results = _evaluate(config, workdir, previous, model, sp, codec, lg)
    figures = {"understanding": results["understanding"]["pope_overall"],
               "generation": results["generation"]["overall"]}
    if "self_assessment" in results:
      figures["self_assessment"] = results["self_assessment"]["agreement"]
    finish("eval", figures, t0, fp)
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  log(f"=== done in {progress.elapsed()} (this run {time.time() - wall:.0f}s); "
      f"{os.path.join(workdir, 'results.md')}")
  return results


def image_sampling(e) -> dict:
  """How ILLUME's job draws (config.eval): evaluate.ImageSampling's fields."""
  return dict(guidance=float(e.guidance), temperature=float(e.image_temperature),
              top_k=int(e.image_top_k), pixel_steps=int(e.pixel_steps),
              pixel_guidance=float(e.pixel_guidance))


def trained_illume(config, stage_dir, model_cfg, sp, codec):
  """(model, params, formatter, model config) of a stage's ILLUME checkpoint, for sampling."""
  from unimodal_jax import checkpoints
  from unimodal_jax.data import formatting
  from unimodal_jax.data.vocab import Vocab
  from unimodal_jax.models import build
  model_config = build.config_from_dict(model_cfg)
  model = build.build(model_config)
  params, _ = checkpoints.restore_params(stage_dir)
  vocab = Vocab.from_sentencepiece(sp, image_codes=codec.codebook_size)
  formatter = formatting.Formatter(sp, vocab, formatting.FormatConfig(
      max_length=4 * int(config.seq_len), tokens_per_image=model_config.tokens_per_image,
      **{**config.format.to_dict(), "text_dropout": 0.0}))
  return model, params, formatter, model_config


def _check_self_assessment(config):
  sa, eval_seed = config.self_assessment, int(config.data.eval_seed)
  if int(sa.prompt_seed) == eval_seed:
    raise ValueError(f"config.self_assessment.prompt_seed={int(sa.prompt_seed)} is the "
                     f"evaluation's seed (config.data.eval_seed): the self-assessment prompts "
                     f"must be kept apart from the evaluation's")
  if int(sa.per_category) < 1 or float(sa.weight) <= 0:
    raise ValueError(f"config.self_assessment: per_category={int(sa.per_category)} and "
                     f"weight={float(sa.weight)} must be positive (enabled=False turns it off)")


def _stage_mesh(config):
  """The stages' mesh (config.stage_defaults.mesh), which drawing runs on too."""
  from unimodal_jax import sharding
  return sharding.make_mesh(config.stage_defaults.mesh.to_dict())


def self_assessment_drawings(config, stage_dir, model_cfg, sp, codec, prompts: list[dict],
                             seed: int, log=print) -> np.ndarray:
  """What a stage's ILLUME checkpoint draws for prompts, sampled as the evaluation samples:
  codes and pixels data-parallel on the stages' mesh (a pod's devices each draw their share)."""
  from unimodal_jax.pipeline import evaluate
  model, params, formatter, _ = trained_illume(config, stage_dir, model_cfg, sp, codec)
  mesh = _stage_mesh(config)
  log(f"drawing {len(prompts)} prompts on mesh {dict(mesh.shape)}")
  draw = evaluate.CodeDrawer(model, params, formatter, codec,
                             evaluate.ImageSampling(**image_sampling(config.eval)),
                             int(config.eval.batch), mesh=mesh)
  return evaluate.draw_prompts(draw, formatter, [p["prompt"] for p in prompts], seed)


def _self_assessment_data(config, out, stage2_dir, model_cfg, sp, codec, log) -> dict:
  """The self-assessment phase: the stage-2 model draws for GenEval-style prompts of
  config.self_assessment.prompt_seed (never the evaluation's); the judge assesses each drawing;
  the dialogues are written to `out`."""
  from unimodal_jax.alignment import self_assessment
  from unimodal_jax.data.worlds import geneval
  from unimodal_jax.pipeline import evaluate
  seed = int(config.self_assessment.prompt_seed)
  prompts = geneval.geneval_prompts(seed, int(config.self_assessment.per_category))
  images = self_assessment_drawings(config, stage2_dir, model_cfg, sp, codec, prompts, seed,
                                    log=log)
  scores = evaluate.geneval_scores(prompts, images)
  log("stage-2 drawings: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
  figures = self_assessment.write_data(out, prompts, images, seed=seed, tokenize=codec.tokenize,
                                       balance=bool(config.self_assessment.get("balance", False)),
                                       log=log)
  figures["stage2_geneval"] = scores
  return figures


def _evaluate(config, workdir, stage_dir, model_cfg, sp, codec, log) -> dict:
  from unimodal_jax.alignment import self_assessment
  from unimodal_jax.data.worlds import geneval
  from unimodal_jax.eval import shapes_judge
  from unimodal_jax.pipeline import evaluate, report
  e = config.eval
  model, params, formatter, model_config = trained_illume(config, stage_dir, model_cfg, sp,
                                                           codec)
  seed = int(config.data.eval_seed)
  s = evaluate.ImageSampling(**image_sampling(e))
  t = time.time()
  bench = os.path.join(workdir, report.BENCHMARKS)
  und = evaluate.understanding(model, params, formatter, sp, seed, int(e.pope_per_style),
                               int(e.vqa_per_kind), int(e.batch), log=log,
                               pope_dir=os.path.join(bench, "pope"))
  t_und = time.time() - t
  draw = evaluate.CodeDrawer(model, params, formatter, codec, s, int(e.batch),
                             mesh=_stage_mesh(config))
  t = time.time()
  gen, prompts, gen_images = evaluate.generation(draw, formatter, seed,
                                                 int(e.geneval_per_category), log=log,
                                                 out_dir=os.path.join(bench, "geneval"))
  gen["tokenizer_ceiling"], rendered, decoded = evaluate.generation_ceiling(
      codec, seed, int(e.geneval_per_category), s, log=log)
  t_gen = time.time() - t
  # The model assesses its own held-out drawings, as the self-assessment dialogues ask.
  t = time.time()
  judged = [self_assessment.judge_assessor(p["spec"], im) for p, im in zip(prompts, gen_images)]
  own = lambda images: self_assessment.model_assessments(model, params, formatter, sp, prompts,
                                                         images, int(e.batch))
  texts = own(gen_images)
  assessed = self_assessment.agreement(prompts, texts, judged)
  log(f"eval: self-assessment agrees with the judge on {assessed['agreement']:.3f} of "
      f"{assessed['images']} drawings (balanced {assessed['balanced_agreement']:.3f}, readable "
      f"{assessed['parsed']:.3f})")
  # Can it read its drawings at all? The same counting questions about the right scenes, their
  # reconstructions through the tokenizer and its own drawings (the judge's counts as truth).
  if evaluate.count_word_pieces(sp) is None:
    log("eval: reading check skipped: the text tokenizer splits the count words")
  else:
    answer_logits = functools.partial(evaluate.first_logits, model, params)
    assessed["reading"] = {name: evaluate.counting_reads(answer_logits, formatter, sp, prompts,
                                                         read, int(e.batch))
                           for name, read in (("scenes", rendered), ("reconstructions", decoded),
                                              ("drawings", gen_images))}
    log("eval: counting the asked objects, the model reads " + ", ".join(
        f"{k} {v['accuracy']:.3f}" for k, v in assessed["reading"].items()))
  draws = int(e.get("self_assessed_draws", 1))
  if draws > 1:  # test-time use: up to `draws` drawings per prompt, the model's pick scored
    images = [gen_images] + [evaluate.draw_prompts(draw, formatter, [p["prompt"] for p in prompts],
                                                   seed + 1000 * n) for n in range(1, draws)]
    chosen, picks = self_assessment.choose_by_self_assessment(
        prompts, images, [texts] + [own(im) for im in images[1:]])
    gen["self_assessed"] = dict(
        evaluate.geneval_scores(prompts, chosen), draws=draws,
        first_draw_kept=float(np.mean([n == 0 for n in picks])),
        # the first drawings' verdicts are the judge's assessments above
        any_draw_right=float(np.mean([self_assessment.matches(judged[i]) or any(
            geneval.satisfied(p["spec"], shapes_judge.detect(im[i])) for im in images[1:])
            for i, p in enumerate(prompts)])))
    log(f"eval: generation, the model's pick of {draws} drawings per prompt by its own "
        f"assessment: overall {gen['self_assessed']['overall']:.3f} (any drawing right: "
        f"{gen['self_assessed']['any_draw_right']:.3f})")
  t_assess = time.time() - t
  t = time.time()
  edit, instructions, edit_images = evaluate.editing(draw, formatter, seed, int(e.edits),
                                                     log=log)
  t_edit = time.time() - t
  t = time.time()
  doc = interleaved_eval(e, model, params, formatter, draw, seed, bench, log)
  t_doc = time.time() - t
  phases = _load_phases(workdir)
  results = {
      "understanding": und, "generation": gen, "editing": edit, "self_assessment": assessed,
      **({"interleaved": doc} if doc else {}),
      "eval_seconds": {"understanding": t_und, "generation": t_gen, "editing": t_edit,
                       "self_assessment": t_assess, "interleaved": t_doc},
      "phase_seconds": {k: v["seconds"] for k, v in phases.items()},
      "tokenizer": phases.get("tokenizer", {}).get("figures", {}).get("semantic_tokenizer"),
      "model": {"num_params": model_config.num_params(),
                "tokens_per_image": codec.tokens_per_image, "image_codes": codec.codebook_size,
                "text_vocab": sp.get_piece_size()},
  }
  results_lib.write_json(os.path.join(workdir, "results.json"), results)
  report.write_markdown(os.path.join(workdir, "results.md"), results)
  n = int(e.samples)
  report.write_samples(os.path.join(workdir, "samples.png"),
                       report.evenly_spaced([(p["prompt"], im)
                                             for p, im in zip(prompts, gen_images)], n),
                       [(ins, pair) for ins, pair in zip(instructions[:n // 2],
                                                         edit_images[:n // 2])])
  return results


def interleaved_eval(e, model, params, formatter, draw, seed, bench, log) -> dict | None:
  """Interleaved consistency of eval.interleaved_documents held-out stories (None: off, as in
  workdirs of configs without the key)."""
  from unimodal_jax.pipeline import evaluate
  count = int(e.get("interleaved_documents", 0))
  if not count:
    return None
  return evaluate.interleaved(model, params, formatter, draw, seed, count, log=log,
                              out_dir=os.path.join(bench, "interleaved"))


__all__ = ["PHASES", "CONFIG_FILE", "Progress", "run", "stage_config", "model_dict",
           "self_assessment_drawings", "finished_illume", "load_codec", "trained_illume",
           "image_sampling", "save_config", "read_config", "interleaved_eval"]
