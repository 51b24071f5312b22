"""results.json: every run's final figures, written atomically (a kill mid-write leaves the
previous file, never half of one)."""
import json
import os


def write_json(path: str, value: dict) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2, sort_keys=True)
  os.replace(tmp, path)
