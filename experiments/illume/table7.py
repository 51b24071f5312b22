"""ILLUME Table 7 in miniature: stage 3 with and without the self-assessment data, on seeds.

    python -m experiments.illume.table7 --workdir=DIR [--seeds=0,1,2] [--config=CONFIG]
        [--config.FIELD=VALUE ...]

For each stage seed, the main job (experiments/tiny/illume_shapes.py by default) runs twice:
DIR/seed<N>/without (config.self_assessment.enabled=False: stage 3 as ILLUME's baseline) and
DIR/seed<N>/with (the self-assessment phase between stages 2 and 3, its dialogues in stage 3's
mix). The second arm starts from a copy of the first's data and stages 1-2, so the arms of a
seed differ only in stage 3's data: a paired comparison. Resumable: a rerun skips what finished.
Prints, and writes to DIR/table7.md and DIR/table7.json, GenEval-style per category and overall
and POPE-style accuracy (mean ± standard deviation over the seeds) beside the paper's Table 7,
and the model's agreement with the judge on its own held-out drawings.
`--config=experiments/tiny/illume_shapes.py:micro` runs in minutes (for tests; its figures mean
nothing).
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np

# ILLUME Table 7 (../shared/reference/papers.md): GenEval overall and per category, POPE.
PAPER = {
    "without": {"overall": 0.56, "single_object": 0.98, "two_object": 0.80, "counting": 0.35,
                "colors": 0.69, "position": 0.34, "color_attr": 0.22, "pope": 0.864},
    "with": {"overall": 0.59, "single_object": 0.99, "two_object": 0.84, "counting": 0.43,
             "colors": 0.72, "position": 0.33, "color_attr": 0.24, "pope": 0.861},
}
ARMS = ("without", "with")
COLUMNS = ("overall", "single_object", "two_object", "counting", "colors", "position",
           "color_attr", "pope", "self_assessment", "self_assessment_balanced")
SHARED = ("tokenizer", "data", "stage1", "stage2")  # phases the arms of a seed share


def _share_upstream(source: str, target: str) -> None:
  """Start `target` from `source`'s finished phases up to stage 2 (copies, so neither arm can
  write into the other's)."""
  if os.path.exists(os.path.join(target, "phases.json")):
    return  # started earlier: resume it as it is
  with open(os.path.join(source, "phases.json")) as f:
    phases = json.load(f)
  os.makedirs(target, exist_ok=True)
  for name in SHARED:
    if os.path.isdir(os.path.join(source, name)):
      shutil.copytree(os.path.join(source, name), os.path.join(target, name))
  with open(os.path.join(target, "phases.json"), "w") as f:
    json.dump({k: v for k, v in phases.items() if k in SHARED}, f)


def row_of(results: dict) -> dict:
  gen = results["generation"]
  row = {k: gen[k] for k in COLUMNS if k in gen}
  row["pope"] = results["understanding"]["pope_overall"]
  assessed = results.get("self_assessment", {})
  row["self_assessment"] = assessed.get("agreement", float("nan"))
  row["self_assessment_balanced"] = assessed.get("balanced_agreement", float("nan"))
  return row


def summarize(rows: dict[str, list[dict]], seeds) -> tuple[str, dict]:
  """(markdown, JSON) of the arms' mean ± std over seeds, the paper's figures beside them."""
  stats = {arm: {k: (float(np.mean([r[k] for r in rows[arm]])),
                     float(np.std([r[k] for r in rows[arm]])))
                 for k in COLUMNS} for arm in ARMS}
  head = ["arm"] + list(COLUMNS)
  lines = [f"ILLUME Table 7 in miniature: stage seeds {', '.join(map(str, seeds))}; mean ± std "
           f"(paper's figure in brackets; POPE as a fraction; self_assessment: the model's "
           f"agreement with the judge on its own held-out drawings, plain and balanced (0.5: a "
           f"constant verdict), not in the paper).", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for arm in ARMS:
    cells = []
    for k in COLUMNS:
      m, s = stats[arm][k]
      paper = PAPER[arm].get(k)
      cells.append(f"{m:.3f} ± {s:.3f}" + (f" ({paper:.2f})" if paper is not None else ""))
    lines.append(f"| {arm} self-assessment | " + " | ".join(cells) + " |")
  delta = {k: stats["with"][k][0] - stats["without"][k][0] for k in COLUMNS}
  paired = {k: [w[k] - wo[k] for w, wo in zip(rows["with"], rows["without"])] for k in COLUMNS}
  lines += ["", "Effect (with - without), per seed and mean; the paper's: GenEval overall "
            f"{PAPER['with']['overall'] - PAPER['without']['overall']:+.2f}, POPE "
            f"{PAPER['with']['pope'] - PAPER['without']['pope']:+.3f}.", ""]
  for k in ("overall", "pope", "self_assessment_balanced"):
    lines.append(f"- {k}: " + ", ".join(f"{d:+.3f}" for d in paired[k])
                 + f" (mean {delta[k]:+.3f})")
  return "\n".join(lines) + "\n", {"seeds": list(seeds), "stats": stats, "rows": rows,
                                   "paper": PAPER, "delta": delta}


def run(base_config, workdir: str, seeds, log=print) -> dict:
  """Both arms on every seed (resumable); returns the table's JSON."""
  from unimodal_jax.pipeline import recipe
  rows = {arm: [] for arm in ARMS}
  for seed in seeds:
    for arm in ARMS:
      config = base_config.copy_and_resolve_references()
      config.seed = int(seed)
      config.self_assessment.enabled = arm == "with"
      wd = os.path.join(workdir, f"seed{seed}", arm)
      if arm == "with":
        _share_upstream(os.path.join(workdir, f"seed{seed}", "without"), wd)
      log(f"### table7: seed {seed}, {arm} self-assessment -> {wd}")
      rows[arm].append(row_of(recipe.run(config, wd, log=log)))
  markdown, table = summarize(rows, seeds)
  with open(os.path.join(workdir, "table7.md"), "w") as f:
    f.write(markdown)
  with open(os.path.join(workdir, "table7.json"), "w") as f:
    json.dump(table, f, indent=1)
  log(markdown)
  return table


def main(argv):
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {argv[1:]}")
  seeds = [int(s) for s in _SEEDS.value]
  if len(seeds) < 1:
    raise SystemExit("--seeds: give at least one stage seed (the paper's comparison needs 3)")
  run(_CONFIG.value, _WORKDIR.value, seeds, log=lambda *a: print(*a, flush=True))


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from unimodal_jax.config_path import add_experiments_root
  add_experiments_root()  # configs import experiments.*
  from absl import app, flags, logging
  from ml_collections import config_flags
  logging.set_verbosity(logging.WARNING)
  _WORKDIR = flags.DEFINE_string("workdir", None, "output directory (rerun to resume)")
  _SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "stage seeds (config.seed), each run "
                             "with and without the self-assessment data")
  _CONFIG = config_flags.DEFINE_config_file(
      "config", "experiments/tiny/illume_shapes.py", "the main job's config (path[:variant]); "
      "--config.FIELD=VALUE overrides a field in both arms")
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
