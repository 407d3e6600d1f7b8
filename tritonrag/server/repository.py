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
                         or Path(__file__).resolve().parents[1] / "model_repository")

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


# Scheduling settings a benchmark variant may change per model (perf/ablate.py).
SCHEDULING = ("max_batch_size", "max_queue_delay_us", "instances")


def set_scheduling(config_text: str, max_batch_size: int | None = None, max_queue_delay_us: int | None = None,
                   instances: int | None = None) -> str:
    """Return `config_text` with its max_batch_size, dynamic batcher delay and/or instance count replaced.

    A field the config does not have (an ensemble has no batcher or instances) is left
    alone for the delay and the count; max_batch_size must be there.
    """
    edits = (("max_batch_size", r"^max_batch_size:\s*\d+", "max_batch_size: {}", max_batch_size, True),
             ("max_queue_delay_us", r"\bmax_queue_delay_microseconds:\s*\d+",
              "max_queue_delay_microseconds: {}", max_queue_delay_us, False),
             ("instances", r"(instance_group\s*\[\s*\{\s*count:\s*)\d+", None, instances, False))
    for name, pattern, template, value, required in edits:
        if value is None:
            continue
        if int(value) < (0 if name == "max_queue_delay_us" else 1):
            raise ValueError(f"{name} out of range: {value}")
        replace = (lambda m, v=int(value): f"{m.group(1)}{v}") if template is None else template.format(int(value))
        config_text, count = re.subn(pattern, replace, config_text, flags=re.MULTILINE)
        if count == 0 and required:
            raise KeyError(f"this config.pbtxt has no {name}")
    return config_text


def render_repository(target: Path, overrides: Mapping[str, Mapping[str, str]],
                      source: Path = SOURCE_REPOSITORY,
                      max_queue: Mapping[str, int] | None = None,
                      queue_timeout_s: Mapping[str, float] | None = None,
                      scheduling: Mapping[str, Mapping[str, int]] | None = None) -> Path:
    """Copy `source` to `target`; apply {model: {parameter: value}} overrides, queue limits and
    {model: {"max_batch_size"|"max_queue_delay_us"|"instances": n}} scheduling settings."""
    target = Path(target)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    max_queue, queue_timeout_s, scheduling = max_queue or {}, queue_timeout_s or {}, scheduling or {}
    for model in {*overrides, *max_queue, *queue_timeout_s, *scheduling}:
        config_path = target / model / "config.pbtxt"
        if not config_path.exists():
            raise KeyError(f"no model {model!r} in {source}")
        text = config_path.read_text(encoding="utf-8")
        for key, value in overrides.get(model, {}).items():
            text = set_parameter(text, key, value)
        text = set_queue_policy(text, max_queue.get(model), queue_timeout_s.get(model))
        unknown = set(scheduling.get(model, {})) - set(SCHEDULING)
        if unknown:
            raise KeyError(f"unknown scheduling setting {sorted(unknown)}; choose from {SCHEDULING}")
        text = set_scheduling(text, **scheduling.get(model, {}))
        config_path.write_text(text, encoding="utf-8")
    return target
