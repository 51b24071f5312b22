"""DreamLLM stage I, alignment (experiments/dreamllm/stages.py): creation-only by default (the
dream queries and the condition projector, LM weight 0, diffusion weight 1); `:comprehension`
trains the vision projector on captions instead (LM weight 1, diffusion weight 0). LR 2e-3.

  python -m unimodal_jax.train --config=experiments/dreamllm/stage1.py --workdir=DIR \
    --config.train.init_parts='{"llm": VICUNA_DIR, ...}' --config.data.sources='{...}'

Memory check without a TPU (the last line is JSON with "fits"):
  python tools/aot_compile.py --config=experiments/dreamllm/stage1.py --topology=v5p-256
"""
from experiments.dreamllm import dreamllm7b


def get_config(arg=None):
  if arg not in (None, "", "comprehension"):
    raise ValueError(f"experiments/dreamllm/stage1.py: unknown variant {arg!r} "
                     "(use 'comprehension' or nothing)")
  return dreamllm7b.get_config("1_comprehension" if arg == "comprehension" else "1")
