"""Train: `python -m unimodal_jax.train --config=experiments/tiny/lm.py --workdir=DIR`.

Any config field can be overridden: --config.train.steps=500 --config.mesh.data=-1 ...
Running the same command again resumes from the latest checkpoint in DIR. Several processes
(hosts, or processes on one CPU machine with gloo collectives) each run the same command with
--num_processes, --process_id and --coordinator_address. Progress goes to the terminal,
TensorBoard event files to DIR/tensorboard, final metrics to DIR/results.json. Exit code 3 means
the run stopped after too many non-finite steps (a checkpoint was saved).
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file (Python)")
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, logs and results")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "number of JAX processes (multi-host)")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "this process's index")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "127.0.0.1:12345",
                                   "host:port of process 0, for multi-process runs")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None or not _WORKDIR.value:
    raise app.UsageError("--config and --workdir are required")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  from unimodal_jax import sharding
  sharding.initialize_processes(_NUM_PROCESSES.value, _PROCESS_ID.value, _COORDINATOR.value)
  from unimodal_jax.train import loop
  try:
    loop.run(_CONFIG.value, _WORKDIR.value)
  except loop.NonFiniteStop:
    sys.exit(loop.EXIT_NONFINITE)


if __name__ == "__main__":
  from unimodal_jax.config_path import add_experiments_root
  add_experiments_root()  # configs import experiments.*
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  app.run(main)
