"""One batch spec (train/batch_spec.py): the data pipeline's batches have exactly its fields,
shapes and dtypes, and the AOT compiler builds its abstract batch from it."""
import chex
import numpy as np
import pytest

from unimodal_jax.train import batch_spec, data_setup


def _documents_config():
  from experiments.tiny import documents_smoke
  config = documents_smoke.get_config()
  config.global_batch = 4
  config.train.eval_batches = 1
  return config


def test_a_real_pipeline_batch_has_the_specs_fields_shapes_and_dtypes(tmp_path):
  config = _documents_config()
  spec = batch_spec.batch_spec(config)
  data = data_setup.build(config, str(tmp_path), lambda *a, **k: None)
  for batch in (next(data.train_iter), data.eval_batches[0]):
    assert set(batch) == set(spec)
    for name, want in spec.items():
      chex.assert_shape(batch[name], want.shape)
      chex.assert_type(batch[name], want.dtype)
    batch_spec.check_local_batch(batch, spec, 1, "test")
  # The segment fields are what packing writes, not zeros: every row holds a document.
  assert batch["segment_ids"].max() >= 1 and batch["positions"].max() > 0


def test_lm_text_batches_match_their_spec(tmp_path):
  from experiments.tiny import lm
  config = lm.get_config("micro")
  spec = batch_spec.batch_spec(config)
  assert sorted(spec) == ["inputs", "target_mask", "targets"]
  data = data_setup.build(config, str(tmp_path), lambda *a, **k: None)
  batch_spec.check_local_batch(next(data.train_iter), spec, 1, "test")


def test_a_batch_off_the_spec_is_refused_by_field():
  config = _documents_config()
  spec = batch_spec.batch_spec(config)
  batch = {k: np.zeros(v.shape, v.dtype) for k, v in spec.items()}
  batch_spec.check_local_batch(batch, spec, 1, "here")
  with pytest.raises(ValueError, match=r"here: .*missing \['positions'\]"):
    batch_spec.check_local_batch({k: v for k, v in batch.items() if k != "positions"}, spec, 1,
                                 "here")
  bad = dict(batch, segment_ids=batch["segment_ids"].astype(np.int64))
  with pytest.raises(ValueError, match="'segment_ids' is int64"):
    batch_spec.check_local_batch(bad, spec, 1, "here")
  # Two processes: each holds half the rows.
  with pytest.raises(ValueError, match="'inputs'"):
    batch_spec.check_local_batch(batch, spec, 2, "here")


def test_unknown_data_kind_is_named():
  config = _documents_config()
  config.data.kind = "parquet"
  with pytest.raises(ValueError, match="config.data.kind='parquet'"):
    batch_spec.batch_spec(config)
