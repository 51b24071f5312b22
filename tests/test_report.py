"""The main job's samples.png: each image above its prompt, the sections packed without gaps."""
import numpy as np
import pytest
from PIL import Image

from unimodal_jax.pipeline import report


def test_samples_grid_has_no_empty_cells(tmp_path):
  rng = np.random.default_rng(0)
  gens = [(f"a photo of shape {i}", rng.integers(1, 255, (32, 32, 3), dtype=np.uint8))
          for i in range(8)]
  edits = [(f"edit {i}", rng.integers(1, 255, (2, 32, 32, 3), dtype=np.uint8)) for i in range(4)]
  path = str(tmp_path / "samples.png")
  report.write_samples(path, gens, edits)
  grid = np.asarray(Image.open(path).convert("RGB"))
  cell = report._cell(gens[0][1], gens[0][0])
  edit_cell = report._cell(np.concatenate(list(edits[0][1]), axis=1), edits[0][0])
  # 4 generations per row, 2 edits (twice as wide) per row: the same width, no padding.
  assert edit_cell.width == 2 * cell.width
  assert grid.shape[1] == 4 * cell.width
  assert grid.shape[0] == 2 * cell.height + 2 * edit_cell.height
  # Each image sits at the top left of its cell, its prompt under it: every cell holds its image.
  for i, (_, im) in enumerate(gens):
    x, y = (i % 4) * cell.width, (i // 4) * cell.height
    np.testing.assert_array_equal(grid[y:y + 128:4, x:x + 128:4], im)
  for i, (_, pair) in enumerate(edits):
    x, y = (i % 2) * edit_cell.width, 2 * cell.height + (i // 2) * edit_cell.height
    np.testing.assert_array_equal(grid[y:y + 128:4, x + 128:x + 256:4], pair[1])


@pytest.mark.parametrize("total", [3, 8, 120, 300, 301])
def test_samples_are_exactly_n_spread_over_every_category(total):
  """The grid's prompts: exactly `samples` of them (all when fewer), one from each stretch of the
  category-grouped prompt list; a stride of len // n gave 9 cells of 8 for 300 prompts."""
  picked = report.evenly_spaced(range(total), 8)
  assert len(picked) == min(total, 8)
  assert picked == sorted(set(picked))
  if total >= 8:
    # Six categories of equal size: every one shows.
    assert {p * 6 // total for p in picked} == set(range(6))
  assert report.evenly_spaced(range(total), 0) == []


def test_pope_auc_equals_sklearn_roc_auc():
  """The yes - no logit ranking AUC of evaluate.understanding is the ROC curve's area (ties
  half), 0.5 for a constant margin, and 0.5 with one class missing."""
  from sklearn.metrics import roc_auc_score

  from unimodal_jax.pipeline import evaluate
  rng = np.random.default_rng(0)
  truth = rng.random(300) < 0.5
  margin = np.round(rng.normal(size=300) + truth, 1)  # rounded: many ties
  assert evaluate.ranking_auc(margin, truth) == pytest.approx(roc_auc_score(truth, margin))
  assert evaluate.ranking_auc(np.zeros(300), truth) == 0.5
  assert evaluate.ranking_auc(margin, np.ones(300, bool)) == 0.5
  assert evaluate.ranking_auc(-margin, truth) == pytest.approx(1 - roc_auc_score(truth, margin))
