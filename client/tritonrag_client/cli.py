"""`ask "question"`: print the service's answer and its sources."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

from .client import RagClient
from .protocol import PROTOCOLS, Answer, RagError, Source


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ask", description="Ask the tritonrag service a question.")
    parser.add_argument("question")
    parser.add_argument("--url", help="host:port (default 127.0.0.1:8001 for gRPC, 127.0.0.1:8000 for HTTP)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="grpc")
    parser.add_argument("--top-k", type=int, help="passages to retrieve (server default 3)")
    parser.add_argument("--max-tokens", type=int, help="answer length limit (server default 32)")
    parser.add_argument("--fusion", help="the retriever's fusion for this question: dense, bm25, zscore or rrf "
                                         "(server default: its configured one)")
    parser.add_argument("--temperature", type=float, help="sampling temperature, 0 to 100 (default 0: greedy)")
    parser.add_argument("--top-p", type=float, help="nucleus sampling, in (0, 1] (default 1)")
    parser.add_argument("--search", action="store_true", help="retrieve passages only, no generation")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--timeout", type=float, help="seconds to wait for the answer")
    return parser


def format_answer(answer: Answer) -> str:
    lines = [answer.answer]
    if answer.finish_reason == "length":
        lines.append("[cut at the max_tokens limit: --max-tokens for more]")
    lines += ["", "Sources:"]
    lines += [f"  {s.id}  ({s.score:.3f})" for s in answer.sources]
    return "\n".join(lines)


def format_hits(hits: list[Source], width: int = 100) -> str:
    return "\n".join(f"{s.id}  ({s.score:.3f})\n    {textwrap.shorten(s.text or '', width)}" for s in hits)


def to_json(result: Answer | list[Source]) -> str:
    if isinstance(result, Answer):
        return json.dumps({"answer": result.answer, "finish_reason": result.finish_reason,
                           "sources": [vars(s) for s in result.sources]})
    return json.dumps({"sources": [vars(s) for s in result]})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with RagClient(args.url, protocol=args.protocol, timeout_s=args.timeout) as client:
            if args.search:
                result = client.search(args.question, top_k=args.top_k, fusion=args.fusion)
            else:
                result = client.ask(args.question, top_k=args.top_k, max_tokens=args.max_tokens, fusion=args.fusion,
                                    temperature=args.temperature, top_p=args.top_p)
    except (RagError, OSError) as exc:  # OSError: nothing listening (HTTP)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(to_json(result))
    else:
        print(format_hits(result) if args.search else format_answer(result))
    return 0
