"""tools/bench_train.py on a toy config: both sides train (loss falls) and the report is
consistent. Speed itself is measured by running the tool, not here."""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))

import numpy as np  # noqa: E402

import bench_train  # noqa: E402


def test_both_train_steps_learn_the_same_batch():
  a = bench_train._args(["--batch", "2", "--seq_len", "16", "--hidden", "32", "--layers", "1",
                         "--heads", "2", "--mlp", "64", "--vocab", "64"])
  tokens = np.random.default_rng(0).integers(0, 64, (2, 17)).astype(np.int32)
  ours, _ = bench_train.jax_runner(a, tokens)
  hf = bench_train.torch_runner(a, tokens, compiled=False)
  for run in (ours, hf):
    first = run()
    assert abs(first - np.log(64)) < 0.3  # both start near uniform over the vocabulary
    for _ in range(30):
      last = run()
    assert last < first - 0.05


def test_report_fields_agree():
  r = bench_train.main(["--batch", "2", "--seq_len", "16", "--hidden", "32", "--layers", "1",
                        "--heads", "2", "--mlp", "64", "--vocab", "64", "--steps", "1",
                        "--repeats", "3", "--no_compile"])
  assert abs(r["ratio_vs_hf"] - r["tokens_per_s"] / r["hf_tokens_per_s"]) < 0.01
  assert r["hf_compiled_tokens_per_s"] is None and 0 < r["mfu"] < 1
  assert r["config"]["vocab"] == 64
