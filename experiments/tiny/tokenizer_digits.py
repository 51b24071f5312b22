"""ILLUME's semantic tokenizer on the digits world (sklearn's 8x8 scans rendered at 32 px):
tokenizer_shapes.py's model and schedule on other images.

    python -m unimodal_jax.train.tokenizer --config=experiments/tiny/tokenizer_digits.py --workdir=/tmp/tokd

The CLIP is experiments/tiny/clip_shapes.py on 8 px patches (it sees both worlds' captions),
the main job's; point `encoder.clip_workdir` at a main-job run's DIR/tokenizer/clip to reuse it.
Train images: the 1,078 scans of the digits 'train' split; held out: the 270 'judge_test' scans,
scored by the digits judge (an SVM trained on the 'judge_train' split, 98% on clean renders):
DIR/results.json `semantic_tokenizer.judge_digit_accuracy` is how often it still reads the same
digit after tokenize -> detokenize. `:micro` is the seconds-long smoke variant.

Measured (2 cores, the CLIP of a main-job run reused, baseline off): feature cosine 0.978,
codebook usage 0.994 (16 tokens per image, 512 codes), and the judge reads the same digit in
0.993 of the 270 reconstructions (0.981 of the originals: the reconstructions are smoother);
tokenizer 157 s, pixel decoder 1,500 steps 861 s with another job on the cores.
"""
from experiments.tiny import tokenizer_shapes


def get_config(arg=None):
  if arg not in (None, "", "micro"):
    raise ValueError(f"experiments/tiny/tokenizer_digits.py: unknown variant {arg!r}")
  c = tokenizer_shapes.get_config(arg)
  micro = arg == "micro"
  c.data.update(world="digits", train_count=200 if micro else 1078,
                eval_count=24 if micro else 270)
  if not micro:  # digits fill the image: 16 tokens of the 8 px patch CLIP and 512 codes suffice
    # (the figures above)
    c.encoder.clip_variant = ""
    c.tokenizer.codebook_size = 512
    c.tokenizer.code_dim = 32
    c.pixel_train.steps = 1500
  return c
