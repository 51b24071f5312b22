"""Text that ships with Python itself: the docstrings of the standard library.

The default corpus of the tiny LM experiment: no download, identical on every machine with the
same Python version. Documents are module, class and function docstrings, in sorted file order.
"""
from __future__ import annotations

import ast
import os
import sysconfig
import warnings

# Test suites and vendored third-party code are not the library's own prose.
_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "__pycache__", "ensurepip",
              "turtledemo", "pydoc_data"}


def stdlib_files() -> list[str]:
  root = sysconfig.get_paths()["stdlib"]
  files = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
    files += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
  return files


def docstrings(min_chars: int = 40) -> list[str]:
  """Every docstring of at least `min_chars` characters, in a deterministic order."""
  docs = []
  for path in stdlib_files():
    try:
      with open(path, encoding="utf-8") as f, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = ast.parse(f.read())
    except (SyntaxError, UnicodeDecodeError, ValueError):
      continue  # a few stdlib files are templates or use another encoding
    for node in ast.walk(tree):
      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(node)
        if doc and len(doc) >= min_chars:
          docs.append(doc)
  return docs
