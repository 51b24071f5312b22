"""JSON-lines files as the benchmarks ship them (POPE's questions and answers, GenEval's
metadata): one JSON object per line, blank lines ignored. A bad line is a FormatError that names
the file and the line, so a user fixes the file instead of guessing."""
from __future__ import annotations

import json
import os


class FormatError(ValueError):
  """A benchmark file that does not follow its format; the message says where and why."""


def read(path: str) -> list[tuple[int, dict]]:
  """[(line number, object)] of a JSON-lines file."""
  if not os.path.exists(path):
    raise FormatError(f"{path}: no such file")
  rows = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise FormatError(f"{path}, line {n}: not JSON ({e.msg})") from None
      if not isinstance(record, dict):
        raise FormatError(f"{path}, line {n}: expected a JSON object, got "
                          f"{type(record).__name__}")
      rows.append((n, record))
  return rows


def require(record: dict, fields: dict, where: str) -> None:
  """Each field present with one of its types ({"text": str, "question_id": (int, str)})."""
  for name, types in fields.items():
    if name not in record:
      raise FormatError(f"{where}: missing {name!r} (has {sorted(record)})")
    if not isinstance(record[name], types) or isinstance(record[name], bool):
      raise FormatError(f"{where}: {name!r} is {record[name]!r}; expected "
                        f"{getattr(types, '__name__', None) or [t.__name__ for t in types]}")


def write(path: str, records) -> None:
  """One JSON object per line (written whole, then renamed: a kill leaves no half file)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, sort_keys=True) + "\n")
  os.replace(tmp, path)
