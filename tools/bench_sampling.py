"""The project's sampler against Hugging Face `generate` on the same model, weights and batch
(issue 8's second yardstick).

    python tools/bench_sampling.py [--batch 8 --prompt_len 32 --image_tokens 256
                                    --text_tokens 64 --guidance 3.0 --image_codes 4096]
                                   [--hidden 256 --layers 4 --heads 8 --mlp 704 --vocab 8192]
                                   [--repeats 3]

Two jobs, both greedy so the two sides can be checked against each other:
- image: exactly `--image_tokens` tokens from the image range of the vocabulary (its last
  `--image_codes` ids) with classifier-free guidance against the prompt with its condition (all
  but the first and last prompt tokens) removed. Ours: `sampling.generate_image` (one batch of
  conditional + unconditional rows, KV cache, a scan). HF: `generate(guidance_scale=...,
  negative_prompt_ids=...)` with a logits processor that keeps the image range.
- text: `--text_tokens` new tokens, no stop token. Ours: `sampling.generate_text`; HF: `generate`.

The HF model is a LlamaForCausalLM holding our random weights (via hf_decoder.params_to_hf), in
float32, with its SDPA attention. Sides alternate, `--repeats` rounds after a warm-up (XLA
compile), medians compared. Prints one JSON line: image_tokens_per_s, hf_image_tokens_per_s,
image_ratio_vs_hf, text_tokens_per_s, hf_text_tokens_per_s, text_ratio_vs_hf, and the share of
tokens where both sides picked the same id (greedy decoding of the same weights agrees until a
near-tie is broken differently by float rounding), plus the config.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_model_args import add_model_args, decoder_config  # noqa: E402  (beside this file)


def _args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--prompt_len", type=int, default=32)
  p.add_argument("--image_tokens", type=int, default=256)
  p.add_argument("--text_tokens", type=int, default=64)
  p.add_argument("--guidance", type=float, default=3.0)
  p.add_argument("--image_codes", type=int, default=4096,
                 help="the image range: the vocabulary's last IMAGE_CODES ids")
  add_model_args(p)
  p.add_argument("--repeats", type=int, default=3, help="timed rounds per side")
  a = p.parse_args(argv)
  if not 0 < a.image_codes < a.vocab:
    p.error(f"--image_codes must be in (0, --vocab={a.vocab}), got {a.image_codes}")
  if a.prompt_len < 3:
    p.error(f"--prompt_len must be at least 3 (first token, condition, last token), "
            f"got {a.prompt_len}")
  return a


def _prompts(a):
  """(prompt [B, P], uncond prompt [B, P] left-padded, uncond mask [B, P]) as numpy: random text
  ids; the unconditional rows keep only the first and last prompt tokens."""
  import numpy as np
  rng = np.random.default_rng(0)
  text_ids = a.vocab - a.image_codes
  prompt = rng.integers(1, text_ids, (a.batch, a.prompt_len)).astype(np.int32)
  uncond_mask = np.zeros_like(prompt)
  uncond_mask[:, [0, -1]] = 1
  uncond_prompt = np.zeros_like(prompt)  # the same two tokens, left-padded (HF's form)
  uncond_prompt[:, -2:] = prompt[:, [0, -1]]
  return prompt, uncond_mask, uncond_prompt


def jax_side(a, prompt, uncond_mask):
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from unimodal_jax import sampling
  from unimodal_jax.models.decoder import Decoder
  cfg = decoder_config(a, a.prompt_len + max(a.image_tokens, a.text_tokens))
  model = Decoder(cfg)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
  params = params["params"]
  prompt_j, ones = jnp.asarray(prompt), jnp.ones(prompt.shape, jnp.int32)
  rng = jax.random.key(1)
  text_cfg = sampling.SamplingConfig(max_new_tokens=a.text_tokens, temperature=0.0)

  def image():
    codes = sampling.generate_image(
        model, params, prompt_j, ones, rng, tokens_per_image=a.image_tokens,
        image_offset=a.vocab - a.image_codes, image_codes=a.image_codes, guidance=a.guidance,
        uncond_mask=jnp.asarray(uncond_mask), temperature=0.0)
    return jax.device_get(codes) + (a.vocab - a.image_codes)

  def text():
    return jax.device_get(sampling.generate_text(model, params, prompt_j, ones, rng, text_cfg))
  return image, text, params, cfg


def hf_side(a, params, cfg, prompt, uncond_prompt):
  import numpy as np
  import torch
  import transformers
  from unimodal_jax import hf_decoder
  hf_cfg = transformers.LlamaConfig(**hf_decoder.config_to_hf(cfg, "float32"))
  hf_cfg._attn_implementation = "sdpa"
  model = transformers.LlamaForCausalLM(hf_cfg).float().eval()
  state = {k: torch.from_numpy(np.array(v)) for k, v in hf_decoder.params_to_hf(params, cfg)}
  missing, unexpected = model.load_state_dict(state, strict=False)
  if [m for m in missing if "rotary" not in m] or unexpected:
    raise RuntimeError(f"HF weights did not line up: missing {missing}, unexpected {unexpected}")
  lo = a.vocab - a.image_codes

  class ImageRange(transformers.LogitsProcessor):
    def __call__(self, input_ids, scores):
      scores[:, :lo] = -float("inf")
      return scores

  ids = torch.from_numpy(prompt.astype("int64"))
  attention = torch.ones_like(ids)
  neg = torch.from_numpy(uncond_prompt.astype("int64"))
  neg_attention = (neg != 0).long()
  common = dict(do_sample=False, pad_token_id=0, eos_token_id=None, num_beams=1,
                temperature=None, top_p=None, top_k=None)

  def image():
    with torch.inference_mode():
      out = model.generate(ids, attention_mask=attention, max_new_tokens=a.image_tokens,
                           min_new_tokens=a.image_tokens, guidance_scale=a.guidance,
                           negative_prompt_ids=neg, negative_prompt_attention_mask=neg_attention,
                           logits_processor=transformers.LogitsProcessorList([ImageRange()]),
                           **common)
    return out[:, prompt.shape[1]:].numpy()

  def text():
    with torch.inference_mode():
      out = model.generate(ids, attention_mask=attention, max_new_tokens=a.text_tokens,
                           min_new_tokens=a.text_tokens, **common)
    return out[:, prompt.shape[1]:].numpy()
  return image, text


def _timed(fn):
  start = time.perf_counter()
  out = fn()
  return time.perf_counter() - start, out


def main(argv=None):
  a = _args(argv)
  import numpy as np
  prompt, uncond_mask, uncond_prompt = _prompts(a)
  ours_image, ours_text, params, cfg = jax_side(a, prompt, uncond_mask)
  hf_image, hf_text = hf_side(a, params, cfg, prompt, uncond_prompt)
  jobs = {"image": (ours_image, hf_image, a.image_tokens),
          "text": (ours_text, hf_text, a.text_tokens)}
  outputs = {}
  for job, (ours, hf, _) in jobs.items():  # warm-up (XLA compile) and the outputs compared
    outputs[job] = (ours(), hf())
  times = {f"{side}_{job}": [] for job in jobs for side in ("ours", "hf")}
  for r in range(a.repeats):
    for job, (ours, hf, _) in jobs.items():
      times[f"ours_{job}"].append(_timed(ours)[0])
      times[f"hf_{job}"].append(_timed(hf)[0])
    print(f"round {r + 1}/{a.repeats}: " + ", ".join(
        f"{k} {v[-1]:.2f} s" for k, v in times.items()), file=sys.stderr, flush=True)
  result = {}
  for job, (_, _, n) in jobs.items():
    ours_rate = a.batch * n / statistics.median(times[f"ours_{job}"])
    hf_rate = a.batch * n / statistics.median(times[f"hf_{job}"])
    ours_out, hf_out = outputs[job]
    if ours_out.shape != hf_out.shape:
      raise RuntimeError(f"{job}: ours made {ours_out.shape} tokens, HF {hf_out.shape}")
    result.update({
        f"{job}_tokens_per_s": round(ours_rate, 1),
        f"hf_{job}_tokens_per_s": round(hf_rate, 1),
        f"{job}_ratio_vs_hf": round(ours_rate / hf_rate, 3),
        f"{job}_same_tokens": round(float(np.mean(ours_out == hf_out)), 4),
    })
  result["image_tokens_in_range"] = bool(np.all(outputs["image"][0] >= a.vocab - a.image_codes))
  result["config"] = {k: v for k, v in vars(a).items()}
  result["seconds_median"] = {k: round(statistics.median(v), 4) for k, v in times.items()}
  print(json.dumps(result), flush=True)
  return result


if __name__ == "__main__":
  main()
