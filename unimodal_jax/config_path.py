"""Experiment configs are Python files under `experiments/` that import `experiments.*`, which is
not installed (pyproject.toml): before the flags load a config, the folder that holds its
`experiments` package goes on sys.path, so a command runs from any working directory."""
from __future__ import annotations

import os
import sys


def add_experiments_root(argv: list[str] | None = None) -> None:
  argv = sys.argv if argv is None else argv
  paths = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
  for i, a in enumerate(argv[:-1]):
    if a == "--config":
      paths.append(argv[i + 1])
  for path in paths:
    folder = os.path.dirname(os.path.abspath(path.split(":")[0]))
    while os.path.dirname(folder) != folder:
      if os.path.basename(folder) == "experiments":
        if os.path.dirname(folder) not in sys.path:
          sys.path.insert(0, os.path.dirname(folder))
        break
      folder = os.path.dirname(folder)
