"""Stable Diffusion 2.1-base at paper scale: DreamLLM's image decoder, compiled for a TPU pod.

    python tools/aot_compile.py --config=experiments/dreamllm/sd21_base.py --topology=v5p-256 \
        --program=forward_backward      # frozen U-Net, gradient to the condition (DreamLLM)
    python tools/aot_compile.py --config=experiments/dreamllm/sd21_base.py:finetune \
        --topology=v5p-256              # a full fine-tuning step (AdamW over the U-Net)

The U-Net is diffusers' stabilityai/stable-diffusion-2-1-base `unet/config.json` (865M params:
channels 320/640/1280/1280, 5/10/20/20 heads of 64, cross-attention width 1024, linear
projections, epsilon prediction), working on 64 x 64 x 4 VAE latents of 512 px images. Its
condition is DreamLLM's: the LLM's states at the 64 dream-query positions, projected to 1024
(papers.md, "DreamLLM"). DreamLLM keeps the U-Net frozen and back-propagates the diffusion loss
through it into the LLM: `forward_backward` compiles exactly that (no weight gradients). The
`:finetune` variant compiles the full step (forward, backward, AdamW), float32 master weights.

Weights: `python tools/convert_hf.py --hf_dir SD21_BASE_DIR --out_dir OUT` (the pipeline
directory; OUT/unet and OUT/vae). The batch (256 latents on a v5p-256's 128 chips) is ours: the
paper gives none for the diffusion side. Measured (2026-11-26, docs/results.md): frozen 1.22 GiB
per chip, roofline step 24 ms; fine-tuning 3.50 GiB per chip, 36 ms; both memory-bound.
"""
import ml_collections

SD21_BASE_UNET = dict(
    kind="unet", sample_size=64, in_channels=4, out_channels=4,
    block_out_channels=[320, 640, 1280, 1280],
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    layers_per_block=2, num_attention_heads=[5, 10, 20, 20], transformer_layers_per_block=1,
    cross_attention_dim=1024, use_linear_projection=True, upcast_attention=False,
    norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0)
SD21_BASE_VAE = dict(
    kind="vae", sample_size=512, in_channels=3, out_channels=3, latent_channels=4,
    block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32,
    scaling_factor=0.18215)
# The scheduler of SD-2.1-base (scheduler/scheduler_config.json): diffusion/schedules.py.
SD21_BASE_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                          beta_schedule="scaled_linear", prediction_type="epsilon")
DREAM_QUERIES = 64  # the condition's length: DreamLLM's dream queries


def get_config(arg=None):
  if arg not in (None, "", "finetune"):
    raise ValueError(f"experiments/dreamllm/sd21_base.py: unknown variant {arg!r} "
                     "(use 'finetune' or nothing)")
  finetune = arg == "finetune"
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(
      SD21_BASE_UNET, condition_length=DREAM_QUERIES, remat_policy="full",
      # Frozen: bf16 weights are all it needs; fine-tuning keeps float32 master weights.
      param_dtype="float32" if finetune else "bfloat16", dtype="bfloat16"))
  c.vae = ml_collections.ConfigDict(SD21_BASE_VAE)
  c.schedule = ml_collections.ConfigDict(SD21_BASE_SCHEDULE)
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  c.global_batch = 256
  c.min_snr_gamma = 0.0  # > 0: min-SNR weighting (Hang et al. 2023); DreamLLM's configs: off
  if finetune:
    c.train = ml_collections.ConfigDict(dict(steps=10_000))
    c.optimizer = ml_collections.ConfigDict(dict(
        learning_rate=1e-5, warmup_steps=500, schedule="cosine", end_lr_ratio=0.0,
        b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, clip_grad_norm=1.0))
  return c
