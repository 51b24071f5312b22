"""tools/bench_flash_gpu.py in its --smoke form (the Triton kernels interpreted on the CPU): the
sweeps record every configuration, the best one comes from the swept grids and agrees with the
reference attention, and bad --sizes are named. Its speeds are measured on a GPU, not here."""
import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))

import bench_flash_gpu  # noqa: E402


def test_smoke_sweep_records_each_configuration_and_picks_a_swept_one(tmp_path):
  out = tmp_path / "sweep.jsonl"
  r = bench_flash_gpu.main(["--smoke", "--runs", "1", "--out", str(out)])
  lines = [json.loads(x) for x in out.read_text().splitlines()]
  assert lines[0]["config"] == "xla" and set(lines[0]["ms"]) == {"1x128x2x32_fwd",
                                                                 "1x128x2x32_fwd_bwd"}
  swept = [x for x in lines if "phase" in x]
  assert [x["phase"] for x in swept] == ["forward"] * 2 + ["backward"] * 2
  assert all(x["time_over_reference"] > 0 and "error" not in x for x in swept)
  best = r["best"]
  forward = [x["fields"] for x in swept if x["phase"] == "forward"]
  assert {k: best[k] for k in forward[0]} in forward
  backward = [x["fields"] for x in swept if x["phase"] == "backward"]
  assert {k: best[k] for k in backward[0]} in backward
  (row,) = r["final"]
  # bf16 inputs, values up to a few units: the interpreted kernel agrees to bf16 rounding.
  assert row["max_abs_diff_out"] < 0.05 and row["max_abs_diff_dq"] < 0.05
  assert row["best_ms"] > 0 and row["default_ms"] > 0


def test_bad_sizes_are_named(capsys):
  with pytest.raises(SystemExit):
    bench_flash_gpu._args(["--sizes", "4x2048x16"])
  assert "BxLxHxD" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    bench_flash_gpu._args(["--sizes", "4xbig"])
