"""The model shape flags the benchmark tools share (issue 8's config as defaults), and the
DecoderConfig they describe, and the step timer they share."""
import time


def add_model_args(p):
  p.add_argument("--hidden", type=int, default=256)
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--kv_heads", type=int, default=0, help="0: as --heads")
  p.add_argument("--mlp", type=int, default=704)
  p.add_argument("--vocab", type=int, default=8192)


def decoder_config(a, max_seq_len: int):
  from unimodal_jax.models.decoder_config import DecoderConfig
  return DecoderConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.mlp,
                       num_layers=a.layers, num_heads=a.heads,
                       num_kv_heads=a.kv_heads or a.heads, max_seq_len=max_seq_len,
                       rms_norm_eps=1e-6, attention_impl="auto")


def time_alternately(sides: dict, repeats: int, steps: int, tokens_per_step: int) -> dict:
  """{side: [seconds per step of each round]}: two warm-up calls per side (XLA compiles), then
  `repeats` rounds, each timing every side for `steps` steps in turn, so machine noise hits all
  sides alike; a progress line per round on stderr."""
  import sys
  for run in sides.values():
    run()
    run()
  times = {k: [] for k in sides}
  for r in range(repeats):
    for name, run in sides.items():
      times[name].append(seconds_per_step(run, steps))
    print(f"round {r + 1}/{repeats}: " + ", ".join(
        f"{k} {tokens_per_step / v[-1]:,.0f} tok/s" for k, v in times.items()),
          file=sys.stderr, flush=True)
  return times


def seconds_per_step(run, steps: int) -> float:
  """Mean wall seconds of `steps` calls of `run` (each call blocks until its step is done)."""
  start = time.perf_counter()
  for _ in range(steps):
    run()
  return (time.perf_counter() - start) / steps
