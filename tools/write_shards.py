"""Convert a dataset from the format it ships in to ArrayRecord shards of documents.

Writes OUT_DIR/NAME-00000-of-0000N.array_record (see unimodal_jax/data/shards.py) and
OUT_DIR/dataset_info.json, which lists every skipped record (file, key, reason). Bad records
(missing or corrupt images, malformed records, bad JSON, a truncated tar) are skipped and counted;
with --strict the first one stops the run with an error naming its file and key, exit code 1.
Output order is input order (files as given, then records), whatever --workers is.

formats and examples:

  llava        LLaVA conversation JSON (or JSONL) + image folder -> "conversation" documents
      python tools/write_shards.py --format=llava --input=llava_v1_5_mix665k.json \\
          --image_dir=data/llava_images --out_dir=shards/llava --name=llava_mix665k

  webdataset   tars of key.jpg/.png/.webp + key.txt/.json (img2dataset: LAION, CC3M) -> "caption"
      python tools/write_shards.py --format=webdataset --input='cc3m/*.tar' \\
          --out_dir=shards/cc3m --name=cc3m --workers=8

  interleaved  MMC4 or OBELICS JSONL + image folder -> "interleaved" documents
      python tools/write_shards.py --format=interleaved --input=docs_shard_0.jsonl,docs_shard_1.jsonl \\
          --image_dir=mmc4_images --out_dir=shards/mmc4 --name=mmc4 [--no-drop_missing_images]

  interleaved_webdataset  DreamLLM's interleaved tars: key.json (MMC4's text_list + image_info,
               with matched_sim) + key.<image name> members -> "interleaved" documents, each
               image after the sentence it matches; --min_sim drops weakly matched images
      python tools/write_shards.py --format=interleaved_webdataset --input='mmc4_wds/*.tar' \\
          --out_dir=shards/mmc4_wds --name=mmc4 --min_sim=0.25

  tfds         a TFDS split prepared with file_format=array_record (no tensorflow needed) -> "caption"
      python tools/write_shards.py --format=tfds --tfds_name=coco_captions --tfds_data_dir=~/tfds \\
          --split=train --image_key=image --text_key=captions/text --out_dir=shards/coco --name=coco
      (or --tfds_data_dir=~/tfds/coco_captions/2017/1.1.0 without --tfds_name)
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

from unimodal_jax.data import converters


def _inputs(values: list[str]) -> list[str]:
  """--input values (repeated, comma-separated, globs) -> files, in the order given, each once."""
  files = []
  for value in values:
    for pattern in filter(None, (v.strip() for v in value.split(","))):
      if glob.has_magic(pattern):
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matches:
          raise FileNotFoundError(f"--input={pattern!r} matches no file")
      elif os.path.isfile(os.path.expanduser(pattern)):
        matches = [os.path.expanduser(pattern)]
      else:
        raise FileNotFoundError(f"--input={pattern!r}: no such file")
      files.extend(m for m in matches if m not in files)
  return files


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--format", required=True, choices=sorted(converters.FORMATS),
                 help="input format (see above)")
  p.add_argument("--input", action="append", default=[],
                 help="input files or globs; repeat the flag or separate with commas")
  p.add_argument("--image_dir", help="folder that relative image paths / image names resolve in "
                 "(llava, interleaved; default: each input file's folder)")
  p.add_argument("--out_dir", required=True, help="dataset directory to write")
  p.add_argument("--name", required=True, help="dataset name: the shard file prefix")
  p.add_argument("--records_per_shard", type=int, default=10000, help="documents per shard")
  p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                 help="processes converting input files (tfds: index ranges) in parallel "
                 "(default: min(4, CPUs)); the output does not depend on it")
  p.add_argument("--strict", action="store_true",
                 help="stop at the first bad record (exit 1, naming file and key) instead of skipping it")
  p.add_argument("--drop_missing_images", action=argparse.BooleanOptionalAction, default=True,
                 help="interleaved, interleaved_webdataset: drop a missing or corrupt image and "
                 "keep its document (default), or skip the whole document "
                 "(--no-drop_missing_images)")
  p.add_argument("--min_sim", type=float, default=None,
                 help="interleaved_webdataset: drop (and count) images whose matched_sim is below "
                 "this; images without matched_sim are kept (default: keep all)")
  p.add_argument("--overwrite", action="store_true",
                 help="replace the shards and dataset_info.json already in --out_dir")
  p.add_argument("--no_progress", action="store_true", help="no progress bars")
  tfds = p.add_argument_group("tfds")
  tfds.add_argument("--tfds_name", help="dataset name, e.g. 'coco_captions' or 'name/config:1.0.0'")
  tfds.add_argument("--tfds_data_dir", help="tfds data_dir holding the prepared dataset, or (without "
                    "--tfds_name) a prepared dataset's version directory")
  tfds.add_argument("--split", default="train", help="split, slices allowed: 'train[:1000]'")
  tfds.add_argument("--image_key", default="image", help="Image feature; 'a/b' for nested features")
  tfds.add_argument("--text_key", default="caption", help="Text feature (or a Sequence of Text)")
  return p


def main(argv=None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  if args.format != "tfds" and not args.input:
    parser.error(f"--format={args.format} needs --input")
  if args.min_sim is not None and args.format != "interleaved_webdataset":
    parser.error(f"--min_sim applies to --format=interleaved_webdataset, not {args.format}")
  if args.records_per_shard < 1 or args.workers < 1:
    parser.error("--records_per_shard and --workers must be at least 1")
  options = converters.Options(
      image_dir=args.image_dir, drop_missing_images=args.drop_missing_images, min_sim=args.min_sim,
      tfds_name=args.tfds_name, tfds_data_dir=args.tfds_data_dir and os.path.expanduser(args.tfds_data_dir),
      split=args.split, image_key=args.image_key, text_key=args.text_key)
  created_by = f"tools/write_shards.py --format={args.format}"
  try:
    summary = converters.write_dataset(
        args.format, _inputs(args.input), args.out_dir, args.name, options,
        records_per_shard=args.records_per_shard, workers=args.workers, strict=args.strict,
        overwrite=args.overwrite, progress=not args.no_progress, created_by=created_by)
  except (converters.ConversionError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(summary.line())
  if not summary.num_records:
    print(f"error: no records written (see {os.path.join(args.out_dir, 'dataset_info.json')})",
          file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
