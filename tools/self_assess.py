"""ILLUME's self-assessment data from a trained checkpoint: draw, assess, write the dialogues.

    python tools/self_assess.py --workdir=DIR --out=OUT [--prompts=P.jsonl] [--stage=stage2]
    python tools/self_assess.py --workdir=DIR --images_out=IMAGES [--prompts=P.jsonl]
    python tools/self_assess.py --workdir=DIR --out=OUT --images=IMAGES --assessments=A.jsonl

DIR is an ILLUME main job's workdir (its data phase and the stage have run) and --config its
config (default experiments/tiny/illume_shapes.py, the same overrides as the job). The first form
is the main job's self-assessment phase on its own: the stage's model draws for the prompts
(sampled as config.eval samples), the shapes judge assesses each drawing, and OUT becomes a
shard directory of dialogues (alignment/self_assessment.py) that a stage reads as a source. The
other two plug in another assessor: --images_out writes the drawings (NNNNN.png) and their
prompts (prompts.jsonl) for an external scorer and stops; --assessments then reads its JSON
lines, one per image in order, each {"assessment": {"object": "yes", ...}} with exactly the
aspects that image's prompt asks (a bad line is an error naming it), and writes OUT.

The drawing is data-parallel over config.stage_defaults.mesh, as the stages train: each device
samples the codes, then the pixels, of its share of every batch. On a pod every host runs the
same command with --num_processes, --process_id and --coordinator_address (as `python -m
unimodal_jax.train`); the first writes.

Prompts: JSON lines {"prompt", "category", "spec"} (geneval.py's spec); by default those of
config.self_assessment.prompt_seed (refused if it is the evaluation's seed). Prints one JSON line
last: the counts and the drawings' score per aspect.
"""
import json
import os
import sys


def _read_jsonl(path: str) -> list[dict]:
  from unimodal_jax.eval import jsonl
  try:
    return [row for _, row in jsonl.read(path)]
  except jsonl.FormatError as e:
    raise SystemExit(f"error: {e}")


def _prompts(config, path: str) -> list[dict]:
  from unimodal_jax.data.worlds import geneval
  if not path:
    seed = int(config.self_assessment.prompt_seed)
    if seed == int(config.data.eval_seed):
      raise SystemExit(f"error: config.self_assessment.prompt_seed={seed} is the evaluation's "
                       f"seed; the self-assessment prompts must be kept apart from it")
    return geneval.geneval_prompts(seed, int(config.self_assessment.per_category))
  prompts = _read_jsonl(path)
  for n, p in enumerate(prompts, start=1):
    if not (isinstance(p, dict) and isinstance(p.get("prompt"), str)
            and isinstance(p.get("spec"), dict) and p["spec"].get("include")):
      raise SystemExit(f"error: {path}, prompt {n}: needs 'prompt' (text) and 'spec' (with "
                       f"'include'), got {p!r}")
    p.setdefault("category", "")
  return prompts


def _external_assessments(path: str, prompts: list[dict]) -> list[dict]:
  from unimodal_jax.alignment import self_assessment
  rows = _read_jsonl(path)
  if len(rows) != len(prompts):
    raise SystemExit(f"error: {path} has {len(rows)} assessments for {len(prompts)} images")
  out = []
  for n, (row, p) in enumerate(zip(rows, prompts), start=1):
    a = row.get("assessment") if isinstance(row, dict) else None
    parsed = self_assessment.parse_assessment(json.dumps(a), p["spec"]) if isinstance(
        a, dict) else None
    if parsed is None:
      raise SystemExit(f"error: {path}, line {n}: {a!r} is not an assessment of "
                       f"{p['prompt']!r} (expected exactly the aspects "
                       f"{list(self_assessment.aspects_asked(p['spec']))}, each yes/no)")
    out.append(parsed)
  return out


def main(argv):
  import numpy as np
  from absl import flags, logging
  from unimodal_jax.alignment import self_assessment
  from unimodal_jax.data.worlds import shapes
  from unimodal_jax.pipeline import recipe
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if not (_OUT.value or _IMAGES_OUT.value):
    raise SystemExit("error: give --out (the dialogues' shard directory) or --images_out")
  if bool(_IMAGES.value) != bool(_ASSESSMENTS.value):
    raise SystemExit("error: --images and --assessments go together (an external scorer's "
                     "assessments of drawings written by --images_out)")
  import jax
  from unimodal_jax import sharding
  sharding.initialize_processes(_NUM_PROCESSES.value, _PROCESS_ID.value, _COORDINATOR.value)
  main_process = jax.process_index() == 0  # every process draws its share; the first writes
  config, workdir = _CONFIG.value, _WORKDIR.value

  def log(*args):
    if main_process:
      print(*args, file=sys.stderr, flush=True)

  codec, sp, model = recipe.finished_illume(config, workdir)
  seed = int(config.self_assessment.prompt_seed)
  if _IMAGES.value:
    prompts = _read_jsonl(os.path.join(_IMAGES.value, "prompts.jsonl"))
    images = np.stack([shapes.decode_image(open(os.path.join(_IMAGES.value, f"{i:05d}.png"),
                                                "rb").read()) for i in range(len(prompts))])
    assessments = _external_assessments(_ASSESSMENTS.value, prompts)
  else:
    prompts = _prompts(config, _PROMPTS.value)
    stage_dir = os.path.join(workdir, _STAGE.value)
    log(f"drawing with {stage_dir}")
    images = recipe.self_assessment_drawings(config, stage_dir, model, sp, codec, prompts, seed,
                                             log=log)
    assessments = None  # the shapes judge's
  if not main_process:
    return
  if _IMAGES_OUT.value:
    os.makedirs(_IMAGES_OUT.value, exist_ok=True)
    for i, im in enumerate(images):
      with open(os.path.join(_IMAGES_OUT.value, f"{i:05d}.png"), "wb") as f:
        f.write(shapes.encode_png(im))
    with open(os.path.join(_IMAGES_OUT.value, "prompts.jsonl"), "w") as f:
      f.writelines(json.dumps(p) + "\n" for p in prompts)
    print(json.dumps({"images": len(prompts), "images_out": _IMAGES_OUT.value}))
    return
  figures = self_assessment.write_data(_OUT.value, prompts, images, seed=seed,
                                       assessments=assessments, tokenize=codec.tokenize, log=log)
  print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from unimodal_jax.config_path import add_experiments_root
  add_experiments_root()
  from absl import app, flags
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file(
      "config", "experiments/tiny/illume_shapes.py", "the main job's config (path[:variant])")
  _WORKDIR = flags.DEFINE_string("workdir", None, "an ILLUME main job's workdir")
  _STAGE = flags.DEFINE_string("stage", "stage2", "the stage whose checkpoint draws")
  _PROMPTS = flags.DEFINE_string("prompts", "", "JSON lines {prompt, category, spec}; default: "
                                 "config.self_assessment's prompt seed")
  _OUT = flags.DEFINE_string("out", "", "the dialogues' shard directory")
  _IMAGES_OUT = flags.DEFINE_string("images_out", "", "write the drawings and prompts here for "
                                    "an external scorer, and stop")
  _IMAGES = flags.DEFINE_string("images", "", "drawings written by --images_out")
  _ASSESSMENTS = flags.DEFINE_string("assessments", "", "an external scorer's JSON lines, one "
                                     "per drawing in --images")
  _NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "number of JAX processes (the hosts "
                                        "of a pod each run the same command)")
  _PROCESS_ID = flags.DEFINE_integer("process_id", 0, "this process's index")
  _COORDINATOR = flags.DEFINE_string("coordinator_address", "127.0.0.1:12345",
                                     "host:port of process 0, for multi-process runs")
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
