"""Rendering the model repository that a server runs from.

The repository in the source tree holds the defaults; `render_repository` copies
it to a run folder and writes the chosen models, index path and limits into the
`config.pbtxt` parameters, so that configuration stays in `config.pbtxt` and the
source tree is never edited by a running server.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Mapping

SOURCE_REPOSITORY = Path(os.environ.get("TRITONRAG_MODEL_REPOSITORY")
                         or Path(__file__).resolve().parent.parent / "model_repository")

_PARAM = r'(\{{\s*key:\s*"{key}"\s*,\s*value:\s*\{{\s*string_value:\s*)"(?:[^"\\]|\\.)*"'


def set_parameter(config_text: str, key: str, value: str) -> str:
    """Return `config_text` with parameter `key` set to `value` (it must exist)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    pattern = re.compile(_PARAM.format(key=re.escape(key)))
    text, count = pattern.subn(lambda m: f'{m.group(1)}"{escaped}"', config_text)
    if count == 0:
        raise KeyError(f"parameter {key!r} is not in this config.pbtxt")
    return text


def render_repository(target: Path, overrides: Mapping[str, Mapping[str, str]],
                      source: Path = SOURCE_REPOSITORY) -> Path:
    """Copy `source` to `target` and apply {model: {parameter: value}} overrides."""
    target = Path(target)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for model, params in overrides.items():
        config_path = target / model / "config.pbtxt"
        text = config_path.read_text(encoding="utf-8")
        for key, value in params.items():
            text = set_parameter(text, key, value)
        config_path.write_text(text, encoding="utf-8")
    return target
