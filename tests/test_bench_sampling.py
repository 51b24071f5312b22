"""tools/bench_sampling.py on a toy config: both samplers decode the same weights to the same
greedy tokens (CFG included), image tokens stay in the image range, the report is consistent.
Speed itself is measured by running the tool, not here."""
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))

import bench_sampling  # noqa: E402

TOY = ["--batch", "3", "--prompt_len", "6", "--image_tokens", "12", "--text_tokens", "7",
       "--hidden", "32", "--layers", "2", "--heads", "4", "--kv_heads", "2", "--mlp", "64",
       "--vocab", "96", "--image_codes", "40", "--repeats", "1"]


def test_ours_and_hf_generate_the_same_tokens():
  r = bench_sampling.main(TOY)
  # Greedy over the same float32 weights: any difference in the CFG formula, the masking of the
  # unconditional prompt, positions or the cache would change tokens.
  assert r["image_same_tokens"] == 1.0
  assert r["text_same_tokens"] == 1.0
  assert r["image_tokens_in_range"]
  # The rates are reported to 0.1 token/s, so their quotient matches the ratio only up to that
  # rounding (a fixed 0.01 failed whenever HF's rate was a few tokens/s on a loaded machine).
  ours, hf = r["image_tokens_per_s"], r["hf_image_tokens_per_s"]
  assert r["image_ratio_vs_hf"] == pytest.approx(ours / hf, rel=0.05 / hf + 0.05 / ours + 1e-3)


def test_bad_arguments_are_named():
  with pytest.raises(SystemExit):
    bench_sampling._args(["--image_codes", "9000"])
  with pytest.raises(SystemExit):
    bench_sampling._args(["--prompt_len", "2"])
