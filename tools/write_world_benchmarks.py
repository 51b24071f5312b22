"""The shapes world's held-out tasks as POPE, GenEval and MME files (data/worlds/benchmark_files.py):
what a main job's evaluation asks, in the benchmarks' own formats, for eval/pope.py, eval/geneval.py
and eval/mme.py or for another model's scripts.

    python tools/write_world_benchmarks.py --out=DIR [--config=experiments/tiny/illume_shapes.py]

The seed, image size and question counts are the config's evaluation's (data.eval_seed,
data.image_size, eval.pope_per_style, eval.geneval_per_category); MME's count is a flag. Prints
one JSON line last: the counts written.
"""
import json
import os
import sys


def main(argv):
  from unimodal_jax.data.worlds import benchmark_files
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {argv[1:]}")
  c = _CONFIG.value
  counts = benchmark_files.write_all(
      _OUT.value, int(c.data.eval_seed), int(c.data.image_size), int(c.eval.pope_per_style),
      int(c.eval.geneval_per_category), _MME.value)
  print(f"wrote {_OUT.value}/pope, geneval and mme", flush=True)
  print(json.dumps(counts, sort_keys=True))


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from unimodal_jax.config_path import add_experiments_root
  add_experiments_root()
  from absl import app, flags
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file(
      "config", "experiments/tiny/illume_shapes.py", "a main job's config: its evaluation's seed, "
      "image size and counts")
  _OUT = flags.DEFINE_string("out", None, "output folder (pope/, geneval/, mme/)")
  _MME = flags.DEFINE_integer("mme_per_category", 30, "MME images per category (two questions "
                              "each)")
  flags.mark_flags_as_required(["out"])
  app.run(main)
