"""Run a whole main job: its pretrained parts, data, stages 1-3 and the evaluation, resumable
after a kill at any phase (pipeline/recipe.py).

    python -m unimodal_jax.pipeline --config=experiments/tiny/illume_shapes.py --workdir=DIR
    python -m unimodal_jax.pipeline --config=experiments/tiny/dreamllm_shapes.py --workdir=DIR

Writes DIR/results.md, DIR/results.json and DIR/samples.png (see the config's docstring).
"""
import os


def main(argv):
  from absl import flags, logging
  from unimodal_jax.pipeline import recipe
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  recipe.run(_CONFIG.value, _WORKDIR.value, log=lambda *a: print(*a, flush=True))


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from unimodal_jax.config_path import add_experiments_root
  add_experiments_root()  # configs import experiments.*
  from absl import app, flags
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file("config", None, "recipe config file: "
                                            "experiments/tiny/illume_shapes.py (ILLUME) or "
                                            "experiments/tiny/dreamllm_shapes.py (DreamLLM)")
  _WORKDIR = flags.DEFINE_string("workdir", None, "output directory (rerun to resume)")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
