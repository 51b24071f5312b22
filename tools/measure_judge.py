"""Measure the shapes-world judge: how often it reads a scene's objects back exactly.

    python tools/measure_judge.py [--count=150] [--seed=0] [--size=64] [--geneval_per_category=20]

For random scenes it renders each image, optionally degrades it (noise, blur, color shift, JPEG at
the mild / moderate / heavy levels of shapes_judge.DEGRADATIONS) and counts the scenes whose
detected objects equal the ground truth as a multiset of (shape, color, size). Then it scores
GenEval-style prompts on images drawn for them (should be 1.0) and on images drawn for other
prompts (the verdict should equal the ground-truth verdict). Prints a table, and last one JSON
line with every number. The defaults run in well under a minute on 2 CPU cores.
"""
import argparse
import json
import sys
import time


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--count", type=int, default=150,
                 help="random scenes per condition (clean, and each degradation level)")
  p.add_argument("--seed", type=int, default=0, help="seed of scenes, noise and prompts")
  p.add_argument("--size", type=int, default=64, help="image size in pixels (square)")
  p.add_argument("--geneval_per_category", type=int, default=20,
                 help="GenEval-style prompts per category (0 skips the scorer check)")
  args = p.parse_args(argv)
  if args.count <= 0:
    print(f"error: --count={args.count}; expected > 0", file=sys.stderr)
    return 2
  if args.size < 16:
    print(f"error: --size={args.size}; expected >= 16 pixels", file=sys.stderr)
    return 2
  if args.geneval_per_category < 0:
    print(f"error: --geneval_per_category={args.geneval_per_category}; expected >= 0",
          file=sys.stderr)
    return 2

  import numpy as np

  from unimodal_jax.data.worlds import geneval, shapes
  from unimodal_jax.eval import shapes_judge

  start = time.time()
  results = {"count": args.count, "seed": args.seed, "size": args.size}
  print(f"{'condition':<14}{'level':>8}{'accuracy':>10}")
  clean = shapes_judge.judge_accuracy(args.seed, args.count, None, args.size)
  results["clean"] = clean
  print(f"{'clean':<14}{'':>8}{clean:>10.3f}", flush=True)
  for kind, levels in shapes_judge.DEGRADATIONS.items():
    results[kind] = {}
    for level in levels:
      accuracy = shapes_judge.judge_accuracy(args.seed, args.count, (kind, level), args.size)
      results[kind][str(level)] = accuracy
      print(f"{kind:<14}{level:>8g}{accuracy:>10.3f}", flush=True)

  if args.geneval_per_category:
    prompts = geneval.geneval_prompts(args.seed, args.geneval_per_category)
    rng = np.random.default_rng([args.seed, 3])
    scenes = [geneval.render_for_spec(q["spec"], rng, args.size) for q in prompts]
    images = [shapes.render(s) for s in scenes]
    own, agree = {}, {}
    for i, q in enumerate(prompts):
      own.setdefault(q["category"], []).append(shapes_judge.score(q["spec"], images[i]))
      # An image drawn for another prompt: the judge must reach the ground truth's verdict.
      j = (i * 7 + 3) % len(prompts)
      truth = geneval.satisfied(q["spec"], scenes[j].objects)
      agree.setdefault(q["category"], []).append(
          shapes_judge.score(q["spec"], images[j]) == truth)
    print(f"\n{'geneval':<14}{'own image':>10}{'other image':>13}")
    results["geneval_own"], results["geneval_other_agreement"] = {}, {}
    for category in geneval.GENEVAL_CATEGORIES:
      results["geneval_own"][category] = float(np.mean(own[category]))
      results["geneval_other_agreement"][category] = float(np.mean(agree[category]))
      print(f"{category:<14}{np.mean(own[category]):>10.3f}{np.mean(agree[category]):>13.3f}")
  results["seconds"] = round(time.time() - start, 1)
  print(json.dumps(results))
  return 0


if __name__ == "__main__":
  sys.exit(main())
