import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SQUAD = Path(os.environ.get("TRITONRAG_SQUAD", ROOT.parent / "shared" / "data" / "squad-v2.0-dev-part.json"))


@pytest.fixture(scope="session")
def squad_path() -> Path:
    if not SQUAD.exists():
        pytest.skip(f"SQuAD data not found at {SQUAD}")
    return SQUAD


@pytest.fixture(scope="session")
def embedder():
    from tritonrag.models.embedding import Embedder

    return Embedder("builtin:all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def generator():
    from tritonrag.generation.generator import Generator

    return Generator("builtin:SmolLM2-135M-Instruct")


_FIGURES: list[str] = []


@pytest.fixture
def report_figure():
    """Record a measured figure; they are printed together at the end of the run."""
    return _FIGURES.append


def pytest_terminal_summary(terminalreporter):
    if _FIGURES:
        terminalreporter.section("measured figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)
