"""ILLUME stage 2, unified image-text alignment (Table 5): the vision adapter and the LLM (with
the image codes' embedding and head rows) train at 5.0e-5; the vision encoder stays frozen.
Batch 1024, 15,000 steps, 4,096-token rows, FSDP over a v5p-256 with full remat. Data: 15M
image-text pairs both ways (image-to-text, text-to-image) and more. Starts from stage 1:

  python -m unimodal_jax.train --config=experiments/illume/stage2.py --workdir=DIR \
    --config.train.init_from=STAGE1_DIR --config.data.sources='{...}'

Memory check without a TPU (the last line is JSON with "fits"; the README has the figures):
  python tools/aot_compile.py --config=experiments/illume/stage2.py --topology=v5p-256
"""
from experiments.illume import illume7b


def get_config(arg=None):
  return illume7b.get_config(2, arg)
