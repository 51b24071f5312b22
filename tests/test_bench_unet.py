"""tools/bench_unet.py on a tiny config, in both modes: the report has every field with positive
rates, and both sides compute the same loss from the same weights and batch, before and after
one AdamW step, so they time the same computation. Speed itself is measured by running the
tool, not here."""
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))

import bench_unet  # noqa: E402  (first: it sets torch's OpenMP wait policy)

pytest.importorskip("torch")
pytest.importorskip("diffusers")

TINY = ["--batch", "2", "--sample_size", "8", "--channels", "32,32", "--heads", "2",
        "--layers_per_block", "1", "--cross_attention_dim", "16", "--condition_length", "5",
        "--norm_groups", "8", "--steps", "1", "--repeats", "1", "--no_compile"]


@pytest.mark.parametrize("mode", [pytest.param(m, marks=pytest.mark.slow) if m == "full" else m
                                  for m in bench_unet.MODES])
def test_report_and_equal_losses(mode):
  r = bench_unet.main(TINY + ["--mode", mode])
  for key in ("steps_per_s", "diffusers_steps_per_s", "ratio_vs_diffusers"):
    assert r[key] > 0, key
  assert abs(r["ratio_vs_diffusers"] - r["steps_per_s"] / r["diffusers_steps_per_s"]) < 0.01
  assert r["diffusers_compiled_steps_per_s"] is None and r["torch_compile_error"] is None
  assert r["mode"] == mode and r["config"]["channels"] == [32, 32]
  assert set(r["step_seconds_median"]) == {"ours", "diffusers"}
  ours, theirs = r["first_losses"]["ours"], r["first_losses"]["diffusers"]
  assert len(ours) == len(theirs) == 2 and theirs[0] > 0.1
  for step, (mine, ref) in enumerate(zip(ours, theirs)):  # equal weights, then one update each
    assert abs(mine - ref) <= 1e-4 * ref, (mode, step, mine, ref)
  assert ours[1] < ours[0] and theirs[1] < theirs[0]  # the update lowered the loss on both
  assert r["loss_rel_difference"] <= 1e-4
