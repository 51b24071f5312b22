"""ILLUME stage 1, visual embedding initialization (Table 5): only the vision adapter (1.0e-3) and
the image codes' embedding and head rows (2.0e-4) train; the LLM and the vision encoder are
frozen. Batch 256, 5,000 steps; data: image captions plus the image-reconstruction task (a read
image, then the same image written as codes), e.g. LLaVA-558K shards:

  python -m unimodal_jax.train --config=experiments/illume/stage1.py --workdir=DIR \
    --config.train.init_parts='{"llm": "VICUNA_DIR", "vision_encoder": "CLIP_DIR"}' \
    --config.data.sources='{"cap": {"path": "SHARDS", "weight": 1.0}}'

Memory check without a TPU:
  python tools/aot_compile.py --config=experiments/illume/stage1.py --topology=v5p-256
"""
from experiments.illume import illume7b


def get_config(arg=None):
  return illume7b.get_config(1, arg)
