"""One registry of worlds (data/worlds/__init__.py): every caller's documents come from
`make_document(world, task, seed, index, size, split)`, and a bad world, task or split is named."""
import pytest

from unimodal_jax.data import worlds
from unimodal_jax.data.worlds import digits, geneval, shapes
from unimodal_jax.train import data_setup


@pytest.mark.parametrize("world,task", [(w, t) for w in worlds.WORLDS for t in worlds.tasks(w)])
def test_each_world_and_task_is_the_worlds_own_document(world, task):
  doc = worlds.make_document(world, task, seed=3, index=5, size=16)
  if world == "digits":
    own = digits.document(5, task=task, split_name="train", size=16, seed=3)
  elif task == "geneval":
    own = geneval.make_document(3, 5, size=16)
  else:
    own = shapes.make_document(3, 5, task, size=16)
  assert doc.to_dict() == own.to_dict()
  # Deterministic: the same arguments give the same document.
  assert worlds.make_document(world, task, 3, 5, 16).to_dict() == doc.to_dict()


def test_digits_splits_and_default_counts():
  test_doc = worlds.make_document("digits", "caption", 0, 2, 16, split="judge_test")
  assert test_doc.metadata["split"] == "judge_test"
  assert worlds.default_count("digits", "judge_test") == len(digits.split("judge_test")[1])


@pytest.mark.parametrize("args,message", [
    (("mnist", "caption"), "here: world 'mnist'; expected one of"),
    (("shapes", "poem"), "here: the shapes world has no task 'poem'"),
    (("digits", "edit"), "here: the digits world has no task 'edit'"),
    (("digits", "caption", "validation"), "here: digits split 'validation'"),
    (("shapes", "caption", "judge_test"), "here: the shapes world has no splits"),
])
def test_bad_worlds_tasks_and_splits_are_named(args, message):
  with pytest.raises(ValueError, match=message):
    worlds.check(*args, where="here")


def test_a_pipeline_world_source_is_checked_by_its_config_path():
  with pytest.raises(ValueError, match=r"config.data.sources.qa: the digits world has no task"):
    data_setup._sources({"qa": {"world": "digits", "task": "conversation"}},
                        "config.data.sources")
  source, = data_setup._sources({"geneval": {"world": "shapes", "task": "geneval", "size": 16,
                                             "count": 5}}, "config.data.sources")
  assert len(source.records) == 5
