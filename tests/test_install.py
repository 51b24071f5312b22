"""The install: `pip install .` is the library and what the main job needs, with no torch,
transformers or libtpu, and no generic top-level package (`kernels`, `experiments`) in
site-packages."""
import os
import subprocess
import sys
import tomllib
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("torch", "transformers", "libtpu")


def _requirements():
  with open(os.path.join(REPO, "requirements.txt")) as f:
    return [line.split("==")[0].strip().lower() for line in f
            if line.strip() and not line.startswith("#")]


def test_runtime_requirements_are_pinned_and_light():
  with open(os.path.join(REPO, "requirements.txt")) as f:
    lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
  assert all("==" in line for line in lines), lines
  assert not set(HEAVY) & set(_requirements())
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)
  extras = project["project"]["optional-dependencies"]
  assert {"tpu", "convert", "dev"} <= set(extras)
  for name, pins in extras.items():
    assert all("==" in p for p in pins), (name, pins)
  # chex is pinned because the tests use it (test_batch_spec.py).
  assert any(p.startswith("chex==") for p in extras["dev"])


def test_the_library_and_the_main_job_import_no_torch():
  code = ("import sys\n"
          "import unimodal_jax, unimodal_jax.pipeline.recipe, unimodal_jax.pipeline.evaluate\n"
          "import unimodal_jax.pipeline.pretokenize, unimodal_jax.train.loop\n"
          "import unimodal_jax.train.tokenizer, unimodal_jax.train.contrastive\n"
          "import unimodal_jax.sampling, unimodal_jax.checkpoints, unimodal_jax.aot\n"
          "import unimodal_jax.models.build, unimodal_jax.kernels\n"
          f"print([m for m in {HEAVY!r} if m in sys.modules])\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"), check=True)
  assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


@pytest.mark.slow
def test_the_wheel_holds_one_package(tmp_path):
  """The built wheel has unimodal_jax (the kernels inside it) and nothing else at the top."""
  import shutil
  shutil.rmtree(os.path.join(REPO, "build"), ignore_errors=True)  # no stale files in the wheel
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "--quiet", "-w", str(tmp_path), REPO], check=True, cwd=str(tmp_path))
  wheel, = [f for f in os.listdir(tmp_path) if f.endswith(".whl")]
  names = zipfile.ZipFile(tmp_path / wheel).namelist()
  top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
  assert top == {"unimodal_jax"}, top
  assert "unimodal_jax/kernels/flash_attention.py" in names
  assert "unimodal_jax/train/fit.py" in names
  metadata = next(n for n in names if n.endswith("METADATA"))
  requires = [line for line in zipfile.ZipFile(tmp_path / wheel).read(metadata).decode()
              .splitlines() if line.startswith("Requires-Dist:")]
  plain = [r for r in requires if "extra ==" not in r]
  assert not [r for r in plain if any(h in r.lower() for h in HEAVY)], plain
  assert any("extra == \"tpu\"" in r and "libtpu" in r for r in requires), requires
