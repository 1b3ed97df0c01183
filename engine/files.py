"""Versioned JSON documents (checkpoint configs, tokenizer configs, eval suites): one reader; the
atomic write of a safetensors file + its JSON document (checkpoints, tokenizers, the IDM); and
append-only JSON-lines files (shard indexes, eval rows) read back past a torn last line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file


def read_json_doc(file: Path, kind: str, fmt: str, version: int, error: type[ValueError]) -> dict[str, Any]:
    """Parse ``file`` and check it is a ``fmt`` document of ``version``. Every failure raises
    ``error`` with a message that names the file."""
    try:
        doc = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{file}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise error(f"{file}: not a {kind} (expected format {fmt!r})")
    if doc.get("version") != version:
        raise error(f"{file}: unsupported version {doc.get('version')!r} (expected {version})")
    return doc


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, in order; a line that does not parse (the torn last
    line of a killed run) or is not an object is skipped; no file: none."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def save_pair(folder: Path, weights: str, tensors: dict[str, torch.Tensor], config: str,
              doc: dict[str, Any]) -> None:
    """Write ``folder/weights`` (safetensors) and ``folder/config`` (JSON) under temporary names,
    then rename both: a crash never leaves a half-written file under a real name."""
    tmp_w, tmp_c = folder / (weights + ".tmp"), folder / (config + ".tmp")
    save_file(tensors, str(tmp_w))
    tmp_c.write_text(json.dumps(doc, indent=2) + "\n")
    tmp_w.replace(folder / weights)
    tmp_c.replace(folder / config)
