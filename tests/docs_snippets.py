"""Fenced snippets of README.md and docs/*.md, for tests/test_docs.py and its live part.

A fence's info string says how a snippet runs: ```bash / ```python run as written on a CPU
box; ```bash live / ```python live need the running server (tests/integration/test_docs_live.py);
```bash no-run REASON cannot run in CI (Docker, Kubernetes, a GPU, `make` itself) and is
counted as skipped with its reason. Other languages (text, mermaid, yaml) are not code to run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```\s*$", re.S | re.M)
RUNNABLE = ("bash", "python")


@dataclass(frozen=True)
class Snippet:
    path: Path
    line: int
    language: str
    mode: str  # "run", "live" or "no-run"
    reason: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def snippets() -> list[Snippet]:
    found = []
    for path in doc_files():
        text = path.read_text()
        for m in FENCE.finditer(text):
            language, info, code = m.group(1), m.group(2).strip(), m.group(3)
            if language not in RUNNABLE:
                continue
            words = info.split(None, 1)
            mode = words[0] if words else "run"
            if mode not in ("run", "live", "no-run"):
                raise ValueError(f"{path}: unknown fence mode {mode!r} (run, live, no-run)")
            reason = words[1] if len(words) > 1 else ""
            if mode == "no-run" and not reason:
                raise ValueError(f"{path}:{text.count(chr(10), 0, m.start()) + 1}: no-run needs a reason")
            found.append(Snippet(path, text.count("\n", 0, m.start()) + 1, language, mode, reason, code))
    return found


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_snippet(snippet, env=None, cwd=ROOT, timeout=300):
    command = [sys.executable, "-c", snippet.code] if snippet.language == "python" else \
        ["bash", "-euo", "pipefail", "-c", snippet.code]
    return subprocess.run(command, cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=timeout)
