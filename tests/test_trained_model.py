"""unimodal_jax.load's refusals, which need no trained model, and the saved config it reads (the
end-to-end checks run on the micro main jobs' workdirs, tests/test_*_pipeline.py)."""
import os

import pytest

import unimodal_jax
from unimodal_jax.pipeline import recipe


def test_load_names_what_it_cannot_load(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such directory"):
    unimodal_jax.load(str(tmp_path / "absent"))
  with pytest.raises(FileNotFoundError, match="load_pretrained"):
    unimodal_jax.load(str(tmp_path))  # neither a workdir nor a stage
  (tmp_path / "phases.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match="no trained stage yet"):
    unimodal_jax.load(str(tmp_path))
  os.makedirs(tmp_path / "stage2" / "checkpoints")
  with pytest.raises(FileNotFoundError, match="no config.json.*run the main job on it once more"):
    unimodal_jax.load(str(tmp_path))
  os.makedirs(tmp_path / "stage3")
  with pytest.raises(FileNotFoundError, match="this stage has no checkpoints yet"):
    unimodal_jax.load(str(tmp_path / "stage3"))


@pytest.mark.parametrize("name", ["illume_shapes", "dreamllm_shapes"])
def test_the_saved_config_rebuilds_the_same_config(tmp_path, name):
  import importlib
  config = importlib.import_module(f"experiments.tiny.{name}").get_config()
  config.seed = 7  # an override is saved as run
  recipe.save_config(config, str(tmp_path))
  assert recipe.read_config(str(tmp_path)).to_dict() == config.to_dict()
