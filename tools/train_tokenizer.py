"""Train a sentencepiece tokenizer on a built-in corpus (text that ships with Python).

    python tools/train_tokenizer.py --out=spm.model [--corpus=stdlib_docstrings] [--vocab_size=2048]

Prints the corpus size, the vocabulary size and an example encoding. The tiny LM experiment runs
the same training itself (cached in its workdir); this tool is for inspecting or reusing it.
"""
import argparse
import sys
import time


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", required=True, help="output path of the .model file")
  p.add_argument("--corpus", default="stdlib_docstrings", help="built-in corpus name")
  p.add_argument("--vocab_size", type=int, default=2048, help="vocabulary size")
  args = p.parse_args(argv)
  from unimodal_jax.data import lm_data, text_tokenizer
  if args.corpus not in lm_data.CORPORA:
    print(f"error: --corpus={args.corpus!r}; available: {sorted(lm_data.CORPORA)}", file=sys.stderr)
    return 2
  start = time.time()
  docs = lm_data.CORPORA[args.corpus]()
  print(f"{len(docs)} documents, {sum(map(len, docs)) / 1e6:.1f}M characters", flush=True)
  text_tokenizer.train_sentencepiece(docs, args.out, args.vocab_size)
  sp = text_tokenizer.load(args.out)
  example = "Return the number of items in a container."
  print(f"vocabulary {sp.get_piece_size()} -> {args.out} in {time.time() - start:.1f}s")
  print(f"{example!r} -> {sp.encode(example, out_type=str)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
