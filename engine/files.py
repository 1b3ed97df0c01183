"""Versioned JSON documents (checkpoint configs, tokenizer configs, eval suites): one reader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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
