"""The card fields the README's "Reading the model card" table names, as paths into a card."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")


def _section():
  text = open(os.path.join(ROOT, "README.md")).read()
  start = text.index("## Reading the model card")
  end = text.index("\n## ", start + 1)
  return text[start:end]


def documented_paths():
  """[(path tuple, row text)]: every field of the table's first column, and for a `prefix.*`
  row every identifier its meaning column names, as a path under `prefix`."""
  paths = []
  for line in _section().splitlines():
    if not line.startswith("| `"):
      continue
    first, meaning = line.split(" | ", 1)
    names = re.findall(r"`([^`]+)`", first)
    prefix = ()
    for name in names:
      parts = tuple(name.split("."))
      if len(parts) > 1:
        prefix = parts[:-1]
        if parts[-1] == "*":
          for field in re.findall(r"`([^`]+)`", meaning):
            if _IDENTIFIER.fullmatch(field):
              paths.append((prefix + (field,), line))
          continue
        paths.append((parts, line))
      else:
        paths.append((prefix + parts, line))
  return paths


def missing_from(card, top_level):
  """Documented paths starting with one of `top_level` keys that `card` does not hold."""
  missing = []
  for path, line in documented_paths():
    if path[0] not in top_level:
      continue
    node = card
    for key in path:
      if not isinstance(node, dict) or key not in node:
        missing.append(".".join(path))
        break
      node = node[key]
  return missing
