"""The README/docs snippets marked `live` run as written against the session server: the
documented default ports (8000 HTTP, 8001 gRPC) are pointed at the fixture's ports, and a
bare `ask` gets the fixture's address for its protocol."""

from __future__ import annotations

import pytest

from docs_snippets import _env, run_snippet, snippets

LIVE = [s for s in snippets() if s.mode == "live"]


def _pointed(snippet, server):
    http, grpc = server.http_url, server.grpc_url
    code = snippet.code
    for host in ("127.0.0.1", "localhost"):
        code = code.replace(f"{host}:8000", http).replace(f"{host}:8001", grpc)
    if snippet.language == "bash":
        code = ('ask() { case " $* " in *" --url "*) command ask "$@";; '
                f'*" --protocol http "*) command ask --url {http} "$@";; '
                f'*) command ask --url {grpc} "$@";; esac; }}\n') + code
    return type(snippet)(snippet.path, snippet.line, snippet.language, snippet.mode, snippet.reason, code)


@pytest.mark.parametrize("snippet", LIVE, ids=[s.id for s in LIVE])
def test_live_snippet_runs_as_written(snippet, server):
    done = run_snippet(_pointed(snippet, server), env=_env())
    assert done.returncode == 0, f"{snippet.id} failed:\n{snippet.code}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
