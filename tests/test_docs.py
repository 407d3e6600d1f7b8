"""The docs cannot drift: configuration.md against the real config.pbtxt parameters and the
`tritonrag serve` options (both ways), and every runnable snippet of README.md and docs/ run as
written (live-server snippets in tests/integration/test_docs_live.py)."""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

import pytest

from docs_snippets import ROOT, run_snippet, snippets

CONFIG_DOC = ROOT / "docs" / "configuration.md"
PARAM = re.compile(r'\{\s*key:\s*"([^"]+)",\s*value:\s*\{\s*string_value:\s*"([^"]*)"\s*\}\s*\}')
ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|(.*)$", re.M)


def _repository() -> Path:
    for candidate in (ROOT / "tritonrag" / "model_repository", ROOT / "model_repository"):
        if candidate.is_dir():
            return candidate
    raise AssertionError("no model repository found")


def real_parameters() -> dict[str, dict[str, str]]:
    found = {}
    for config in sorted(_repository().glob("*/config.pbtxt")):
        text = config.read_text()
        block = re.search(r"^parameters\s*\[(.*?)^\]", text, re.S | re.M)
        found[config.parent.name] = dict(PARAM.findall(block.group(1))) if block else {}
    return found


def _section(text: str, heading: str) -> str:
    start = text.index(heading + "\n")
    end = re.compile(r"^## ", re.M).search(text, start + len(heading))
    return text[start:end.start() if end else len(text)]


def documented_parameters() -> dict[str, dict[str, str]]:
    section = _section(CONFIG_DOC.read_text(), "## Model parameters")
    found = {}
    for part in re.split(r"^### ", section, flags=re.M)[1:]:
        model = part.split("\n", 1)[0].strip()
        rows = {}
        for key, rest in ROW.findall(part):
            default = re.match(r"\s*`([^`]*)`", rest)
            rows[key] = default.group(1) if default else ""
        found[model] = rows
    return found


def test_every_config_parameter_documented_with_its_default():
    real, documented = real_parameters(), documented_parameters()
    missing = {m: sorted(set(p) - set(documented.get(m, {}))) for m, p in real.items()}
    missing = {m: keys for m, keys in missing.items() if keys}
    assert not missing, f"parameters in config.pbtxt but not in docs/configuration.md: {missing}"
    from tritonrag.common.request_checks import Limits

    def default(key, value):  # an empty value means the package's one default (`Limits`)
        return str(getattr(Limits(), key)) if value == "" and hasattr(Limits, key) else value

    wrong = {f"{m}.{k}": (v, documented[m][k]) for m, p in real.items() for k, v in p.items()
             if documented[m][k].split(" ")[0] != default(k, v)}
    assert not wrong, f"config.pbtxt default vs documented default: {wrong}"


def test_nothing_documented_that_is_not_a_parameter():
    real, documented = real_parameters(), documented_parameters()
    extra = {m: sorted(set(p) - set(real.get(m, {}))) for m, p in documented.items()}
    extra = {m: keys for m, keys in extra.items() if keys}
    assert not extra, f"documented in docs/configuration.md but no config.pbtxt has them: {extra}"


def _serve_actions():
    from tritonrag.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    serve = sub.choices["serve"]
    return {opt: action for action in serve._actions for opt in action.option_strings
            if opt.startswith("--") and opt != "--help"}


def documented_options() -> dict[str, list[str]]:
    section = _section(CONFIG_DOC.read_text(), "## `tritonrag serve` options")
    return {key: [c.strip() for c in rest.rstrip().rstrip("|").split("|")] for key, rest in ROW.findall(section)}


def test_serve_options_documented_both_ways():
    real, documented = _serve_actions(), documented_options()
    assert not set(real) - set(documented), f"undocumented serve options: {sorted(set(real) - set(documented))}"
    assert not set(documented) - set(real), f"documented options serve lacks: {sorted(set(documented) - set(real))}"


def test_serve_option_defaults_match():
    real, documented = _serve_actions(), documented_options()
    for option, action in real.items():
        env, default = documented[option][0], documented[option][1]
        if isinstance(action.default, (int, float)) and not isinstance(action.default, bool):
            assert default == f"`{action.default}`", (option, action.default, default)
        if env:
            for name in re.findall(r"`(TRITON\w+)`", env):
                assert name in Path(sys.modules["tritonrag.cli"].__file__).read_text(), (option, name)


ALL = snippets()
LOCAL = [s for s in ALL if s.mode != "live"]


def test_snippet_census():
    """Says how many snippets run where, and why the skipped ones are skipped (-s shows it)."""
    modes = Counter(s.mode for s in ALL)
    reasons = Counter(s.reason for s in ALL if s.mode == "no-run")
    print(f"\ndoc snippets: {modes['run']} run here, {modes['live']} against a live server, "
          f"{modes['no-run']} skipped")
    for reason, count in reasons.most_common():
        print(f"  skipped {count}: {reason}")
    assert modes["run"] + modes["live"] > 0


@pytest.mark.parametrize("snippet", LOCAL, ids=[s.id for s in LOCAL])
def test_snippet_runs_as_written(snippet, tmp_path):
    if snippet.mode == "no-run":
        pytest.skip(snippet.reason)
    done = run_snippet(snippet)
    assert done.returncode == 0, f"{snippet.id} failed:\n{snippet.code}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_relative_links_resolve():
    from docs_snippets import doc_files

    broken = [f"{path.relative_to(ROOT)}: {target}" for path in [*doc_files(), ROOT / "perf" / "README.md",
                                                                   ROOT / "perf" / "results" / "INDEX.md"]
              if path.exists() for target in LINK.findall(path.read_text())
              if "://" not in target and not (path.parent / target).exists()]
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


RESULT_NAME = re.compile(r"(?:\.\.\.|20\d\d-\d\d-\d\d)_[A-Za-z0-9_.{},*-]*[A-Za-z0-9}*]")


def _expand(name: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", name)
    if not m:
        return [name]
    return [x for part in m.group(1).split(",") for x in _expand(name[:m.start()] + part + name[m.end():])]


def test_result_files_named_in_docs_exist():
    """Every result file a doc names (braces expanded, `*` and a leading `...` as wildcards)
    is still in perf/results, so pruning and renaming cannot leave dangling evidence."""
    from fnmatch import fnmatch

    from docs_snippets import doc_files

    present = [p.name for p in (ROOT / "perf" / "results").iterdir()]
    missing = []
    for path in [*doc_files(), ROOT / "perf" / "README.md", ROOT / "perf" / "results" / "INDEX.md"]:
        for mention in RESULT_NAME.findall(path.read_text()):
            for name in _expand(mention):
                pattern = ("*" + name[3:]) if name.startswith("...") else name
                pattern = pattern if re.search(r"\.(json|csv|png|md|\*)$", pattern) else pattern + ".*"
                if not any(fnmatch(p, pattern) for p in present):
                    missing.append(f"{path.relative_to(ROOT)}: {name}")
    assert not missing, "result files named in docs but not in perf/results:\n" + "\n".join(missing)
