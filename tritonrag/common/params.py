"""Reading `config.pbtxt` parameters.

Triton hands every parameter over as ``{"string_value": "..."}``; an empty or
unfilled (``${...}``) value means "use the default", as in TensorRT-LLM's model
folders, so a rendered repository can leave any setting out.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, TypeVar

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _to_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"not a boolean: {text!r}")


def model_param(config: Mapping[str, Any], name: str, default: T, cast: Callable[[str], T] | None = None) -> T:
    """Return parameter `name` of a parsed model config, cast like `default`."""
    raw = config.get("parameters", {}).get(name, {})
    text = raw.get("string_value", "") if isinstance(raw, Mapping) else str(raw)
    if text is None or text.strip() == "" or text.strip().startswith("${"):
        return default
    if cast is None:
        cast = _to_bool if isinstance(default, bool) else type(default)  # type: ignore[assignment]
    try:
        return cast(text.strip())  # type: ignore[misc]
    except ValueError as exc:
        raise ValueError(f"config parameter {name!r}: {exc}") from exc
