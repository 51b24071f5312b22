"""DreamLLM stage III, supervised fine-tuning (experiments/dreamllm/stages.py): as stage II at
4e-5 on instruction data (conversations, instruction-interleaved documents, pairs). Starts from
stage II:

  python -m unimodal_jax.train --config=experiments/dreamllm/stage3.py --workdir=DIR \
    --config.train.init_from=STAGE2_DIR --config.data.sources='{...}'

Memory check without a TPU:
  python tools/aot_compile.py --config=experiments/dreamllm/stage3.py --topology=v5p-256
"""
from experiments.dreamllm import dreamllm7b


def get_config(arg=None):
  del arg
  return dreamllm7b.get_config("3")
