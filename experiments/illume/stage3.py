"""ILLUME stage 3, supervised fine-tuning (Table 5): everything trains, the vision encoder at
2.0e-6 and the LLM and adapter at 2.0e-5. Batch 1024, 8,000 steps; data: instructions,
high-quality image-text pairs, editing and the self-assessment samples. Starts from stage 2:

  python -m unimodal_jax.train --config=experiments/illume/stage3.py --workdir=DIR \
    --config.train.init_from=STAGE2_DIR --config.data.sources='{...}'

Memory check without a TPU:
  python tools/aot_compile.py --config=experiments/illume/stage3.py --topology=v5p-256
"""
from experiments.illume import illume7b


def get_config(arg=None):
  return illume7b.get_config(3, arg)
