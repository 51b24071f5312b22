"""DreamLLM end to end on the shapes world, on a 2-core CPU: its main job.

    python -m unimodal_jax.pipeline --config=experiments/tiny/dreamllm_shapes.py --workdir=DIR

Phases (each saved as it finishes; a rerun after a kill resumes at the first unfinished one):
  parts       the comprehension encoder (the small CLIP of ILLUME's job, shipped in
              experiments/tiny/pretrained/shapes) and the diffusion decoder: a small U-Net
              pretrained text-to-image on that CLIP's text states, as Stable Diffusion is
              (train/diffusion_decoder.py; shipped in experiments/tiny/pretrained/shapes_dreamllm,
              or trained here with --config.pretrained=none)
  data        documents of the shapes world: images keep their pixels (DreamLLM draws pixels;
              nothing is pre-tokenized into codes)
  stage1      alignment: the dream queries, the condition projector and the vision projector,
              the LLM frozen; text-to-image (diffusion loss) and captions (LM loss). The official
              code runs creation-only and comprehension-only separately and merges the parts;
              their trainable parts are disjoint, so one run with both losses is the same
  stage2      everything but the encoder and the U-Net, LM / diffusion weights 1 / 10, on pairs
              both ways, questions and two-picture stories (interleaved generative
              pretraining: the model learns where <dream_start> goes)
  stage3      the same parts on questions, GenEval-style prompts, pairs and a few stories
  eval        the scores of ILLUME's job on held-out scenes and prompts (POPE-style, VQA,
              GenEval-style by the judge), drawn through the queries and the frozen U-Net; the
              diffusion decoder's own GenEval-style score from CLIP text (its ceiling here); and
              interleaved consistency: documents written from held-out stories' first
              sentences, each placed image judged against the sentence before it
`:micro` runs every phase in seconds (for tests; its figures mean nothing).
"""

import ml_collections

from experiments.dreamllm import stages

CLIP = "experiments/tiny/pretrained/shapes/clip"  # ILLUME's shipped CLIP (with its tokenizer)
PRETRAINED = "experiments/tiny/pretrained/shapes_dreamllm"  # the shipped diffusion decoder


def _groups(stage_names, lr):
  groups = {}
  for s in stage_names:  # the union of the stages' trainable parts
    for part, g in stages.optimizer_groups(s, learning_rate=lr, vae=False).items():
      if part not in groups or not g.get("frozen"):
        groups[part] = g
  return groups


def _stage(steps, batch, groups, weights, sources, warmup, seed):
  return dict(steps=steps, batch=batch, groups=groups, sources=sources, warmup_steps=warmup,
              seed=seed, **weights)


def diffusion_decoder(micro: bool) -> ml_collections.ConfigDict:
  """The U-Net and its text-to-image pretraining (train/diffusion_decoder.py)."""
  c = ml_collections.ConfigDict()
  n = (lambda full: 64) if micro else (lambda full: full)
  c.data = dict(image_size=32, train_seed=0, eval_seed=1,
                counts=dict(caption=n(8000), geneval=n(8000)))
  # 32 px folded into 4 x 4 blocks: the U-Net denoises 8 x 8 x 48. At 32 x 32 x 3 a U-Net of
  # the same widths trained at 7 examples/s on 2 cores, at 8 x 8 x 48 at 36 (2026-11-26).
  c.pixel_patch = 4
  c.unet = dict(
      block_out_channels=[32, 32] if micro else [64, 128],
      down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
      up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
      layers_per_block=1, num_attention_heads=[2, 2] if micro else [2, 4],
      condition_length=24, norm_num_groups=16 if not micro else 8, attention_impl="xla",
      conv_impl="matmul_grad")  # models/matmul_grad_conv.py: ~4x faster training on XLA:CPU
  # DDPM's linear betas (pixel space, as DDPM's 32 px models). The U-Net predicts x0
  # ("sample"), not SD-2.1-base's epsilon: a U-Net this narrow cannot carry 48 channels of noise
  # through to its output, so neither its epsilon (MSE ~0.05 at t > 500 after 2,500 steps,
  # which DDIM scales by up to ~100x) nor its v (noise left in every sample) could be sampled;
  # x0 is a flat-coloured image it can draw (docs/results.md).
  c.schedule = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                    beta_schedule="linear", prediction_type="sample")
  c.cond_dropout = 0.1  # the empty prompt's states instead, for classifier-free guidance
  c.train = dict(steps=20 if micro else 2500, batch_size=16 if micro else 64, seed=0,
                 learning_rate=1e-3, max_warmup_steps=100, warmup_fraction=0.05,
                 end_lr_ratio=0.1, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                 clip_grad_norm=1.0, log_every=10 if micro else 250,
                 checkpoint_every=10 if micro else 500, keep_checkpoints=1,
                 max_consecutive_nonfinite=5, async_checkpointing=False)
  c.eval = dict(geneval_per_category=2 if micro else 20, steps=10 if micro else 50,
                guidance=3.0)
  return c


def get_config(arg=None):
  if arg not in (None, "", "micro"):
    raise ValueError(f"experiments/tiny/dreamllm_shapes.py: unknown variant {arg!r}")
  micro = arg == "micro"
  c = ml_collections.ConfigDict()
  c.model_kind = "dreamllm"
  c.encoder = dict(clip_dir=CLIP,
                   # with pretrained=none: the CLIP trained in the job (ILLUME's encoder recipe)
                   clip_config="experiments/tiny/clip_shapes.py",
                   clip_variant="micro" if micro else "patch4")
  c.diffusion_decoder = diffusion_decoder(micro)
  # The shipped decoder was trained with exactly this decoder config (the job checks);
  # "none": the job trains it itself (about 65 min on 2 cores), as the micro variant does.
  c.pretrained = "none" if micro else PRETRAINED
  size = int(c.diffusion_decoder.data.image_size)

  c.llm = dict(hidden_size=64 if micro else 128, intermediate_size=128 if micro else 384,
               num_layers=2 if micro else 4, num_heads=4, num_kv_heads=2 if micro else 4,
               head_dim=16 if micro else 32, max_seq_len=256, attention_impl="auto")
  # 16 dream queries (the paper: 64 for SD's 77-token condition; our U-Net read <= 24 tokens).
  # 32 (and the 6,000-step decoder, stage seed 0, 2026-11-28): GenEval-style 0.125 against
  # 0.142, and every existence question answered alike (POPE-style 0.50 against 0.59).
  c.num_dream_queries = 4 if micro else 16
  # DreamLLM reads the encoder's penultimate layer. The patch embeddings (feature_layer=0, the
  # best probe layer of this CLIP) answered yes/no questions no better: POPE-style AUC 0.50.
  c.feature_layer = -2
  # As ILLUME's job: each 2 x 2 block of the 8 x 8 patch features read as one token (16 slots
  # per image; the paper's DreamLLM reads every patch of its 224 px view). With 64 slots the
  # model answered every yes/no question alike (POPE-style AUC 0.48, two seeds); with 16, AUC
  # 0.66 and 0.74 (docs/results.md, 2026-11-27).
  c.token_merge = 2
  c.text_model_type = "bpe"
  c.text_vocab_size = 512
  # A caption reads 16 merged features (~40 tokens); a dialogue up to ~98; a text-to-image
  # example ~35 (prompt, <dream_start>, the queries, <dream_end>).
  c.seq_len = 160
  c.format = dict(image_size=size, max_images=4 if micro else 6, text_dropout=0.1,
                  dream_queries=c.num_dream_queries, dream_image_size=size,
                  max_dream_images=2)

  n = (lambda full: 40) if micro else (lambda full: full)
  c.data = dict(image_size=size, train_seed=0, eval_seed=1, counts=dict(
      caption=n(6000), text_to_image=n(6000), geneval=n(8000), conversation=n(9000),
      dialogue=n(6000), story=n(4000)))

  c.seed = 0  # shifts every stage's seed
  joint = {"lm_loss_weight": 1.0, "diffusion_loss_weight": 1.0}
  # Steps sized for the 20-minute budget on 2 cores (each stage also pays ~50 s of compile,
  # set-up and checkpoints). With 16 read slots the job ran 740-787 s at 40 / 260 / 200 steps;
  # 40 / 360 / 280 took 810 / 822 s on a machine ~12% faster and raised POPE-style from 0.57 /
  # 0.59 to 0.65 / 0.74, GenEval-style from 0.11 / 0.11 to 0.17 / 0.14 (stage seeds 0 / 1;
  # docs/results.md, 2026-11-27, night).
  c.stages = {
      "stage1": _stage(20 if micro else 40, 8 if micro else 32,
                       _groups(("1", "1_comprehension"), 3e-3), joint,
                       {"caption": 1.0, "text_to_image": 1.0, "geneval": 1.0},
                       5 if micro else 10, 1),
      # Stage II is DreamLLM's interleaved generative pretraining: stories (a scene's sentence,
      # its picture, an edit's sentence, the edited picture), where the model learns where
      # <dream_start> goes and draws each picture, then reads it; a quarter of that in stage 3
      # keeps the model writing them. Stage seed 0, 2026-11-29 (docs/results.md), stories
      # here / in stage 3: 0.5 / 0.25 gave interleaved consistency 0.212 (2.0 pictures per
      # document, as the stories) and GenEval-style 0.117 (0.158 without stories); 0.5 / 0:
      # 0.200 but 1.0 picture per document (the sentence after it garbled), GenEval-style
      # 0.142; 1.0 / 0.5: 0.150, GenEval-style 0.075.
      "stage2": _stage(20 if micro else 360, 8 if micro else 32, _groups(("2",), 2e-3),
                       stages.loss_weights(2),
                       {"caption": 1.0, "text_to_image": 1.0, "geneval": 1.0,
                        "conversation": 1.0, "dialogue": 2.0, "story": 0.5},
                       5 if micro else 30, 2),
      "stage3": _stage(20 if micro else 280, 8 if micro else 32, _groups(("3",), 1e-3),
                       stages.loss_weights(3),
                       {"conversation": 1.0, "dialogue": 2.0, "geneval": 1.5,
                        "text_to_image": 0.5, "caption": 0.5, "story": 0.25},
                       5 if micro else 30, 3),
  }
  c.stage_defaults = dict(
      llm=dict(rope_theta=10000.0, rms_norm_eps=1e-6, param_dtype="float32", dtype="float32",
               logits_dtype="float32", scan_layers=False, remat_policy="none", family="llama"),
      mesh=dict(data=-1, fsdp=1, tensor=1),
      data=dict(num_workers=0, strict=True, cache_dir=""),
      train=dict(grad_accum_steps=1, z_loss_weight=0.0, eval_batches=0, keep_checkpoints=1,
                 async_checkpointing=False, max_consecutive_nonfinite=5,
                 peak_flops_per_device=0.0),
      logs_per_stage=6, checkpoints_per_stage=3,
      optimizer=dict(learning_rate=0.0, schedule="cosine", end_lr_ratio=0.1, b1=0.9, b2=0.999,
                     eps=1e-8, weight_decay=0.0, clip_grad_norm=1.0))
  c.eval = dict(pope_per_style=6 if micro else 100, vqa_per_kind=6 if micro else 100,
                geneval_per_category=2 if micro else 20, guidance=3.0,
                steps=10 if micro else 50, batch=32, samples=8,
                # documents written from held-out stories' first sentences, each image placed
                # by the model judged against the sentence before it
                interleaved_documents=4 if micro else 40)
  return c
