"""What DreamLLM's main job (experiments/tiny/dreamllm_shapes.py) adds to the shared recipe
(pipeline/recipe.py): its pretrained parts, its model config and its evaluation.

    DIR/parts/clip/               the comprehension encoder, when trained here (pretrained=none);
                                  otherwise config.encoder.clip_dir, ILLUME's shipped CLIP
    DIR/parts/diffusion_decoder/  the U-Net pretrained text-to-image (train/diffusion_decoder.py),
                                  when trained here; otherwise the shipped one (pretrained.py)
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

from unimodal_jax import pretrained


@dataclasses.dataclass
class Parts:
  clip_dir: str
  decoder_dir: str
  figures: dict


def fingerprint_inputs(config) -> list:
  """What the parts phase depends on (shipped weights included, so re-shipped parts rerun)."""
  shipped = str(config.get("pretrained", pretrained.NONE))
  if shipped == pretrained.NONE:
    return [config.encoder.to_dict(), config.diffusion_decoder.to_dict(), shipped]
  directory = pretrained.directory_of(shipped)
  clip_dir = pretrained.directory_of(str(config.encoder.clip_dir))
  return [config.diffusion_decoder.to_dict(), shipped,
          pretrained.weights_digest(directory, "diffusion_decoder"),
          pretrained.weights_digest(os.path.dirname(clip_dir), os.path.basename(clip_dir))]


def locate(config, workdir: str) -> Parts:
  """Where the parts are (after `prepare`), without training anything."""
  shipped = str(config.get("pretrained", pretrained.NONE))
  if shipped == pretrained.NONE:
    parts_dir = os.path.join(workdir, "parts")
    return Parts(os.path.join(parts_dir, "clip"), os.path.join(parts_dir, "diffusion_decoder"),
                 {})
  directory = pretrained.resolve(shipped, config.diffusion_decoder, pretrained.DREAMLLM_PARTS,
                                 "config.diffusion_decoder")
  return Parts(pretrained.directory_of(str(config.encoder.clip_dir)),
               os.path.join(directory, "diffusion_decoder"), {})


def prepare(config, workdir: str, log) -> Parts:
  """Load the shipped parts (checking they belong together) or train them here."""
  parts = locate(config, workdir)
  shipped = str(config.get("pretrained", pretrained.NONE))
  if shipped != pretrained.NONE:
    manifest = pretrained.read_manifest(pretrained.directory_of(shipped))
    log(f"using the diffusion decoder shipped in {pretrained.directory_of(shipped)} "
        f"({manifest['made']}, made by {manifest['command']!r}) and the CLIP in "
        f"{parts.clip_dir}")
    figures = dict(manifest["figures"], pretrained=shipped)
  else:
    if not os.path.exists(os.path.join(parts.clip_dir, "results.json")):
      from unimodal_jax.train import contrastive
      import importlib.util
      spec = importlib.util.spec_from_file_location(
          "clip_config", pretrained.directory_of(str(config.encoder.clip_config)))
      module = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(module)
      log(f"encoder: training a CLIP ({config.encoder.clip_config}) in {parts.clip_dir}")
      contrastive.run(module.get_config(config.encoder.clip_variant or None), parts.clip_dir,
                      log=log)
    from unimodal_jax.train import diffusion_decoder
    figures = diffusion_decoder.run(config.diffusion_decoder, os.path.dirname(parts.decoder_dir),
                                    parts.clip_dir, log=log)
  check_pair(parts.clip_dir, parts.decoder_dir)
  parts.figures = figures
  return parts


def check_pair(clip_dir: str, decoder_dir: str) -> None:
  """The decoder learned to draw from this CLIP's text states: refuse a pair that does not
  belong together (the CLIP retrained, or another decoder shipped)."""
  from unimodal_jax import checkpoints
  from unimodal_jax.models import build
  from unimodal_jax.train.diffusion_decoder import clip_digest
  stored = checkpoints.read_model_config(decoder_dir)
  want = stored.get(build.PROVENANCE, {}).get("text_encoder_digest")
  have = clip_digest(clip_dir)
  if want != have:
    raise ValueError(f"{decoder_dir} was trained on the text states of another CLIP than "
                     f"{clip_dir} (weights digest {str(want)[:12]} != {have[:12]}); ship them "
                     "together (tools/ship_pretrained.py) or use --config.pretrained=none")


def model_dict(config, parts: Parts, text_vocab_size: int) -> dict:
  """The DreamLLM model config: the LLM from the config, the vision tower from the CLIP, the
  U-Net and its schedule from the diffusion decoder, the vocabulary from sentencepiece."""
  from unimodal_jax import checkpoints
  from unimodal_jax.data.vocab import SPECIALS
  from unimodal_jax.models import build
  # The config copies one into the other when it is built; a command line can set only one.
  if int(config.format.dream_queries) != int(config.num_dream_queries):
    raise ValueError(
        f"config.num_dream_queries={config.num_dream_queries} but config.format.dream_queries="
        f"{config.format.dream_queries}: the documents would hold another number of query slots "
        "than the model has queries; set both (--config.num_dream_queries=N "
        "--config.format.dream_queries=N)")
  llm = dict(config.llm.to_dict(), **config.stage_defaults.llm.to_dict())
  llm.update(vocab_size=text_vocab_size + len(SPECIALS))
  clip_cfg = checkpoints.read_model_config(parts.clip_dir)
  unet = {k: v for k, v in checkpoints.read_model_config(parts.decoder_dir).items()
          if k not in ("kind", build.PROVENANCE)}
  dec = config.diffusion_decoder
  return {"kind": "dreamllm", "llm": llm, "vision": clip_cfg["vision"], "unet": unet,
          "num_dream_queries": int(config.num_dream_queries),
          "feature_layer": int(config.feature_layer),
          "token_merge": int(config.get("token_merge", 1)),
          "dream_image_size": int(dec.data.image_size), "pixel_patch": int(dec.pixel_patch),
          "schedule": dec.schedule.to_dict()}


def stage_init(parts: Parts) -> dict:
  """Stage 1 starts from the random init with the encoder and the U-Net replaced."""
  return {"init_parts": {"vision_encoder": parts.clip_dir, "unet": parts.decoder_dir}}


def trained(config, stage_dir, model_cfg, sp):
  """(model, params, formatter, model config) of a stage's DreamLLM checkpoint, for sampling."""
  from unimodal_jax import checkpoints
  from unimodal_jax.data import formatting
  from unimodal_jax.data.vocab import Vocab
  from unimodal_jax.models import build
  model_config = build.config_from_dict(model_cfg)
  model = build.build(model_config)
  params, _ = checkpoints.restore_params(stage_dir)
  vocab = Vocab.from_sentencepiece(sp, image_codes=0)
  formatter = formatting.Formatter(sp, vocab, formatting.FormatConfig(
      max_length=4 * int(config.seq_len), tokens_per_image=model_config.tokens_per_image,
      **{**config.format.to_dict(), "text_dropout": 0.0}))
  return model, params, formatter, model_config


def evaluate(config, workdir, stage_dir, model_cfg, sp, parts: Parts, phases: dict, log) -> dict:
  """POPE-style, VQA and GenEval-style scores, the same as ILLUME's job (pipeline/evaluate.py),
  drawn through the dream queries and the frozen U-Net; results.md, results.json, samples.png."""
  from unimodal_jax.pipeline import evaluate as evaluate_lib, recipe, report
  from unimodal_jax.train import results as results_lib
  e = config.eval
  model, params, formatter, model_config = trained(config, stage_dir, model_cfg, sp)
  seed = int(config.data.eval_seed)
  t = time.time()
  bench = os.path.join(workdir, report.BENCHMARKS)
  und = evaluate_lib.understanding(model, params, formatter, sp, seed, int(e.pope_per_style),
                                   int(e.vqa_per_kind), int(e.batch), log=log,
                                   pope_dir=os.path.join(bench, "pope"))
  t_und = time.time() - t
  t = time.time()
  draw = evaluate_lib.DreamDrawer(model, params, formatter, steps=int(e.steps),
                                  guidance=float(e.guidance), batch=int(e.batch))
  gen, prompts, images = evaluate_lib.generation(draw, formatter, seed,
                                                 int(e.geneval_per_category), log=log,
                                                 out_dir=os.path.join(bench, "geneval"))
  # The decoder's own text-to-image from CLIP text (train/diffusion_decoder.py): the ceiling of
  # what the queries can make it draw, as the tokenizer's is for ILLUME.
  gen["decoder_ceiling"] = (phases.get("parts", {}).get("figures", {}).get("geneval") or {})
  t_gen = time.time() - t
  t = time.time()
  doc = recipe.interleaved_eval(e, model, params, formatter, draw, seed, bench, log)
  t_doc = time.time() - t
  results = {
      "model_kind": "dreamllm",
      "understanding": und, "generation": gen,
      **({"interleaved": doc} if doc else {}),
      "eval_seconds": {"understanding": t_und, "generation": t_gen, "interleaved": t_doc},
      "phase_seconds": {k: v["seconds"] for k, v in phases.items()},
      "model": {"num_params": model_config.num_params(),
                "num_dream_queries": model_config.num_dream_queries,
                "tokens_per_image": model_config.tokens_per_image,
                "text_vocab": sp.get_piece_size()},
  }
  results_lib.write_json(os.path.join(workdir, "results.json"), results)
  report.write_markdown(os.path.join(workdir, "results.md"), results)
  n = int(e.samples)
  report.write_samples(os.path.join(workdir, "samples.png"), report.evenly_spaced(
      [(p["prompt"], im) for p, im in zip(prompts, images)], n), [])
  log(json.dumps({"pope_overall": und["pope_overall"], "geneval_overall": gen["overall"]}))
  return results


__all__ = ["Parts", "fingerprint_inputs", "locate", "prepare", "check_pair", "model_dict",
           "stage_init", "trained", "evaluate"]
