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


def set_queue_policy(config_text: str, max_queue_size: int | None = None,
                     timeout_s: float | None = None) -> str:
    """Return `config_text` with its default_queue_policy's size and/or timeout replaced."""
    for field, value in (("max_queue_size", max_queue_size),
                         ("default_timeout_microseconds", None if timeout_s is None else round(timeout_s * 1e6))):
        if value is None:
            continue
        if int(value) < 0:
            raise ValueError(f"{field} must be >= 0, got {value}")
        config_text, count = re.subn(rf"\b{field}:\s*\d+", f"{field}: {int(value)}", config_text)
        if count != 1:
            raise KeyError(f"this config.pbtxt has {count} {field} fields; expected one default_queue_policy")
    return config_text


def render_repository(target: Path, overrides: Mapping[str, Mapping[str, str]],
                      source: Path = SOURCE_REPOSITORY,
                      max_queue: Mapping[str, int] | None = None,
                      queue_timeout_s: Mapping[str, float] | None = None) -> Path:
    """Copy `source` to `target`; apply {model: {parameter: value}} overrides and queue limits."""
    target = Path(target)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    max_queue, queue_timeout_s = max_queue or {}, queue_timeout_s or {}
    for model in {*overrides, *max_queue, *queue_timeout_s}:
        config_path = target / model / "config.pbtxt"
        if not config_path.exists():
            raise KeyError(f"no model {model!r} in {source}")
        text = config_path.read_text(encoding="utf-8")
        for key, value in overrides.get(model, {}).items():
            text = set_parameter(text, key, value)
        text = set_queue_policy(text, max_queue.get(model), queue_timeout_s.get(model))
        config_path.write_text(text, encoding="utf-8")
    return target
