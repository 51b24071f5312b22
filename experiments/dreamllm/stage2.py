"""DreamLLM stage II, I-GPT interleaved generative pretraining (experiments/dreamllm/stages.py):
the LLM, both projectors and the dream queries train at 2e-5; LM weight 1, diffusion weight 10;
the CLIP encoder, the U-Net and the VAE stay frozen. Starts from stage I:

  python -m unimodal_jax.train --config=experiments/dreamllm/stage2.py --workdir=DIR \
    --config.train.init_from=STAGE1_DIR --config.data.sources='{...}'

Memory check without a TPU, and the step's roofline:
  python tools/aot_compile.py --config=experiments/dreamllm/stage2.py --topology=v5p-256
  python tools/roofline.py --config=experiments/dreamllm/stage2.py --topology=v5p-256
"""
from experiments.dreamllm import dreamllm7b


def get_config(arg=None):
  del arg
  return dreamllm7b.get_config("2")
