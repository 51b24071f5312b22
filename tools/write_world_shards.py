"""Write a built-in world (shapes or digits) as ArrayRecord shards of documents.

    python tools/write_world_shards.py --world=shapes --task=conversation --count=10000 \
        --out_dir=shards/shapes_vqa --name=shapes_vqa [--seed=0] [--size=64]

Worlds are also generated on the fly by the pipeline (data.sources = {name: {world: ...}});
shards are for reuse elsewhere, inspection, or pre-tokenizing images once. Deterministic: the
same flags write the same bytes.
Tasks: shapes: caption, text_to_image, conversation, dialogue, edit, interleaved, geneval;
       digits: caption, text_to_image (--split train | judge_train | judge_test).
"""
import argparse
import os
import sys
import time


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  from unimodal_jax.data import worlds
  p.add_argument("--world", required=True, choices=list(worlds.WORLDS))
  p.add_argument("--task", required=True, help="document task (see above)")
  p.add_argument("--count", type=int, required=True, help="number of documents")
  p.add_argument("--out_dir", required=True)
  p.add_argument("--name", required=True, help="shard file name prefix")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--size", type=int, default=0, help="image size (default: 64 shapes, 32 digits)")
  p.add_argument("--split", default="train", help="digits split")
  p.add_argument("--records_per_shard", type=int, default=10000)
  args = p.parse_args(argv)
  from tqdm import tqdm
  from unimodal_jax.data import shards

  size = args.size or worlds.DEFAULT_SIZE[args.world]
  make = lambda i: worlds.make_document(args.world, args.task, args.seed, i, size, args.split)
  try:
    worlds.check(args.world, args.task, args.split, "--world/--task/--split")
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if os.path.isdir(args.out_dir) and any(f.endswith(".array_record")
                                          for f in os.listdir(args.out_dir)):
    print(f"error: {args.out_dir} already holds shards", file=sys.stderr)
    return 1
  start = time.time()
  n_shards = max(1, -(-args.count // args.records_per_shard))
  written = []
  with tqdm(total=args.count, unit="doc", disable=not sys.stderr.isatty()) as bar:
    for k in range(n_shards):
      lo, hi = k * args.records_per_shard, min(args.count, (k + 1) * args.records_per_shard)

      def docs(lo=lo, hi=hi):
        for i in range(lo, hi):
          bar.update(1)
          yield make(i)

      path = shards.shard_path(args.out_dir, args.name, k, n_shards)
      written.append((path, shards.write_shard(path, docs())))
  shards.write_info(args.out_dir, args.name, written, [],
                    created_by=f"tools/write_world_shards.py --world={args.world} "
                               f"--task={args.task} --seed={args.seed} --size={size}")
  print(f"wrote {args.count} {args.world} {args.task} documents in {n_shards} shard(s) to "
        f"{args.out_dir} in {time.time() - start:.1f}s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
