"""`tritonrag` command line: serve, demo, index and synth."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from .models import sources as model_sources
from .retrieval.search.metric import METRICS
from .server.launcher import ADMIN_APIS

log = logging.getLogger("tritonrag")


def _env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    return [v for v in value.split(os.pathsep) if v] if value else default


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--embedder", default=os.environ.get("TRITONRAG_EMBEDDER", model_sources.DEFAULT_EMBEDDER),
                        help="builtin:NAME, a local folder or a Hugging Face id (env TRITONRAG_EMBEDDER)")
    parser.add_argument("--corpus", action="append", default=None,
                        help="'pydoc' (CPython's docs), or a .jsonl / .txt / SQuAD .json file; repeatable "
                             "(env TRITONRAG_CORPUS, ':'-separated; default pydoc)")
    parser.add_argument("--cache-dir", help="converted models and indexes (env TRITONRAG_CACHE_DIR, "
                                            "default ~/.cache/tritonrag)")


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    _add_model_options(parser)
    parser.add_argument("--generator", default=os.environ.get("TRITONRAG_GENERATOR", model_sources.DEFAULT_GENERATOR),
                        help="builtin:NAME, a local folder or a Hugging Face id (env TRITONRAG_GENERATOR)")
    parser.add_argument("--index", type=Path,
                        help="serve this index folder (made by `tritonrag index`) instead of the cached one built "
                             "from --corpus; a missing or damaged one is an error, never rebuilt")
    parser.add_argument("--build-index", action="store_true",
                        help="with --index: build that folder from --corpus if it does not exist yet (or is "
                             "empty); an existing index is never replaced")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--tritonserver",
                        help="tritonserver binary (env TRITONSERVER; default: the nvidia-pytriton wheel's)")
    parser.add_argument("--backend-dir",
                        help="Triton backends folder (env TRITON_BACKENDS; default: made from the wheel)")
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument("--max-queue", action="append", default=None, metavar="MODEL=N",
                        help="requests that may wait for MODEL before more are rejected (env "
                             "TRITONRAG_MAX_QUEUE, comma-separated; default: config.pbtxt, generator=8)")
    parser.add_argument("--queue-timeout", action="append", default=None, metavar="MODEL=SECONDS",
                        help="a request queued this long for MODEL is rejected (env TRITONRAG_QUEUE_TIMEOUT; "
                             "default: config.pbtxt, generator=60)")
    parser.add_argument("--param", action="append", default=None, metavar="MODEL.KEY=VALUE",
                        help="set a config.pbtxt parameter of one model, e.g. retriever.fusion=dense or "
                             "generator_stream.ignore_eos=true (env TRITONRAG_PARAMS, comma-separated)")
    parser.add_argument("--no-supervise", action="store_true",
                        help="do not restart a dead, hung or partly dead server")
    parser.add_argument("--allow-admin-api", action="append", default=[], metavar="API",
                        choices=[*ADMIN_APIS, "all"],
                        help="leave this admin API open to anyone who can reach the ports: "
                             f"{', '.join(ADMIN_APIS)} or all; repeatable (default: all of them are locked; "
                             "models are never loaded or unloaded through the API)")


def _settings(args: argparse.Namespace):
    from .server.launcher import ServerSettings

    return ServerSettings(
        host=args.host, http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
        embedder=args.embedder, generator=args.generator, corpus=_corpus(args), index=args.index,
        build_index=args.build_index,
        tritonserver=args.tritonserver, backend_dir=args.backend_dir, log_verbose=args.log_verbose,
        open_apis=set(ADMIN_APIS) if "all" in args.allow_admin_api else set(args.allow_admin_api),
        supervise=not args.no_supervise,
        max_queue=_model_values(args.max_queue, "TRITONRAG_MAX_QUEUE", int),
        queue_timeout_s=_model_values(args.queue_timeout, "TRITONRAG_QUEUE_TIMEOUT", float),
        extra_parameters=_model_parameters(args.param))


def _model_parameters(given: list[str] | None) -> dict[str, dict[str, str]]:
    """{model: {key: value}} from repeated MODEL.KEY=VALUE options, else TRITONRAG_PARAMS."""
    parameters: dict[str, dict[str, str]] = {}
    for model_key, value in _model_values(given, "TRITONRAG_PARAMS", str).items():
        model, dot, key = model_key.partition(".")
        if not dot or not model or not key:
            raise SystemExit(f"expected MODEL.KEY=VALUE, got {model_key}={value}")
        parameters.setdefault(model, {})[key] = value
    return parameters


def _model_values(given: list[str] | None, env: str, kind) -> dict:
    """{model: value} from repeated MODEL=VALUE options, else from the comma-separated env."""
    items = given if given is not None else [i for i in os.environ.get(env, "").split(",") if i.strip()]
    values = {}
    for item in items:
        model, sep, value = item.partition("=")
        if not sep or not model.strip():
            raise SystemExit(f"expected MODEL=VALUE, got {item!r}")
        try:
            values[model.strip()] = kind(value)
        except ValueError:
            raise SystemExit(f"{item!r}: {value!r} is not a valid number") from None
    return values


def _corpus(args: argparse.Namespace) -> list[str]:
    return args.corpus or _env_list("TRITONRAG_CORPUS", ["pydoc"])


def _print_answer(server, question: str) -> int:
    from tritonrag_client import RagClient, RagError

    started = time.perf_counter()
    try:
        with RagClient(server.grpc_url, protocol="grpc") as client:
            answer = client.ask(question)
    except RagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Q: {question}\nA: {answer.answer}")
    if answer.finish_reason == "length":
        print("[cut at the max_tokens limit]")
    print("Sources:")
    for source in answer.sources:
        print(f"  {source.id}  ({source.score:.3f})")
    print(f"({time.perf_counter() - started:.2f} s)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .index.store import IndexProblem
    from .server.launcher import TritonServer

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    started = time.perf_counter()
    if args.build_index and args.index is None:
        log.error("--build-index needs --index DIR (without it the cached index is built when missing)")
        return 2
    if args.index is not None and args.corpus and not args.build_index:
        log.warning("--corpus is not used with --index: the index is served as it is "
                    "(add passages with `tritonrag index --add --out %s`)", args.index)
    server = TritonServer(_settings(args))
    try:
        try:
            server.start()
        except (OSError, RuntimeError, TimeoutError, ValueError, IndexProblem) as exc:
            log.error("could not start the server: %s", exc)
            return 1
        log.info("ready in %.1f s: HTTP %s, gRPC %s, metrics %s:%d", time.perf_counter() - started,
                 server.http_url, server.grpc_url, args.host, args.metrics_port)
        restricted = [api for api in ADMIN_APIS if api not in server.settings.open_apis]
        if restricted:
            log.info("locked (no key opens them): %s", ", ".join(restricted))
        status = 0
        if args.ask:
            status = _print_answer(server, args.ask)
            if args.once:
                return status
        while not stop.is_set():
            if server.supervisor is not None and server.supervisor.failed.is_set():
                log.error("tritonserver keeps failing; last log lines:\n%s", server.log_tail())
                return 1
            if server.supervisor is None and server.process.poll() is not None:
                log.error("tritonserver exited with code %s:\n%s", server.process.returncode, server.log_tail())
                return 1
            stop.wait(1.0)
        log.info("stopping")
        if not server.stop():
            log.error("tritonserver did not stop cleanly; last log lines:\n%s", server.log_tail())
            return 1
        log.info("stopped")
        return status
    finally:
        server.stop()


def cmd_index(args: argparse.Namespace) -> int:
    from .index.corpus import load_corpora
    from .index.store import IndexProblem, add_to_index, append_to_index, build_index
    from .models.embedding import Embedder

    passages = load_corpora(_corpus(args))
    embedder = Embedder(args.embedder)
    name = model_sources.model_name(args.embedder)
    try:
        if args.add:
            add = append_to_index if args.in_place else add_to_index
            manifest = add(args.out, passages, embedder.embed_passages, embedder=name)
        else:
            manifest = build_index(args.out, passages, embedder.embed_passages, embedder=name, metric=args.metric)
    except (IndexProblem, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {manifest['count']} passages, dimension {manifest['dimension']}, "
          f"metric {manifest['metric']}, embedder {manifest['embedder']}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .index.synthetic import make_facts, write_facts

    facts = make_facts(args.count, args.seed)
    write_facts(facts, args.out, args.questions)
    print(f"wrote {len(facts)} facts to {args.out}" + (f" and questions to {args.questions}" if args.questions else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tritonrag", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start tritonserver with the RAG models and wait (Ctrl-C stops)")
    _add_server_options(serve)
    serve.add_argument("--ask", help="once ready, ask this question and print the answer")
    serve.add_argument("--once", action="store_true", help="with --ask: stop after answering")
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="start the server, answer one question, stop")
    _add_server_options(demo)
    demo.add_argument("question", nargs="?", default="What does the with statement do?")
    demo.set_defaults(func=lambda a: cmd_serve(argparse.Namespace(**vars(a), ask=a.question, once=True)))

    index = sub.add_parser("index", help="build an index folder from corpora")
    _add_model_options(index)
    index.add_argument("--out", type=Path, required=True)
    index.add_argument("--metric", default="ip", choices=METRICS)
    index.add_argument("--add", action="store_true",
                       help="append the corpora's passages to the existing index at --out (only they are embedded)")
    index.add_argument("--in-place", action="store_true",
                       help="with --add: write the new passages as a segment beside the old files and swap the "
                            "manifest, instead of rewriting the folder")
    index.set_defaults(func=cmd_index)

    synth = sub.add_parser("synth", help="write a synthetic-facts corpus (JSONL) and its questions")
    synth.add_argument("--count", type=int, default=200)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--out", type=Path, required=True)
    synth.add_argument("--questions", type=Path)
    synth.set_defaults(func=cmd_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if getattr(args, "cache_dir", None):
        os.environ["TRITONRAG_CACHE_DIR"] = str(Path(args.cache_dir).resolve())
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
