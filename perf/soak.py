"""Soak: `fraction` of the measured capacity for `duration_s`, watching errors and memory.

Capacity is measured first (closed loop, as in perf/overload.py); then arrivals at
fraction x capacity (evenly spaced by default; --pattern poisson for random gaps) run for
the whole duration while the resident memory of tritonserver and its stub processes is
sampled every few seconds. RSS swings by up to ~40 % with the batch in flight (long
prompts), so a leak is judged on the floor: the lowest RSS of the last tenth of the run
against the lowest of the second tenth (the first is warm-up); the peaks are reported too.

    python perf/soak.py                          # 10 min at 70 % on the embedded default
    python perf/soak.py --duration-s 120         # a short check

Writes perf/results/<date>_<device>_soak_<minutes>min.{json,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "perf"))

from inputs import load_questions  # noqa: E402
from loadgen import MemorySampler, arrival_times, closed_loop, open_loop, summarize, tree_rss_bytes  # noqa: E402


@dataclasses.dataclass
class SoakConfig:
    fraction: float = 0.7
    duration_s: float = 600.0
    probe_s: float = 30.0
    concurrency: int = 2
    max_tokens: int = 32
    top_k: int = 3
    sample_s: float = 5.0
    pattern: str = "constant"


def growth(samples: list[tuple[float, int]], duration_s: float, measure=min) -> float | None:
    """`measure` (min: the floor; max: the peak) of the last tenth's RSS over the second tenth's."""
    tenth = duration_s / 10
    early = [v for t, v in samples if tenth <= t < 2 * tenth]
    late = [v for t, v in samples if t >= duration_s - tenth]
    return measure(late) / measure(early) if early and late else None


async def run_soak(url: str, server_pid: int, questions: list[str], config: SoakConfig) -> dict:
    ask = {"max_tokens": config.max_tokens, "top_k": config.top_k}
    await closed_loop(url, questions[-50:], config.concurrency, 0.1, **ask)  # warm-up
    capacity = summarize(await closed_loop(url, questions, config.concurrency, config.probe_s, **ask), config.probe_s)
    rate = config.fraction * capacity["answered_per_s"]
    times = arrival_times(rate, config.duration_s, config.pattern, seed=2)
    async with MemorySampler(lambda: tree_rss_bytes(server_pid), config.sample_s) as memory:
        outcomes = await open_loop(url, questions[::-1], times, **ask)
    minutes = [summarize([o for o in outcomes if m * 60 <= o.sent_s < (m + 1) * 60], 60.0)
               for m in range(int(config.duration_s // 60))]
    return {
        "config": dataclasses.asdict(config),
        "capacity": capacity,
        "rate_per_s": rate,
        "soak": summarize(outcomes, config.duration_s),
        "per_minute": [{k: m[k] for k in ("requests", "ok", "rejected", "errors", "ok_p50_s", "ok_p99_s")}
                       for m in minutes],
        "rss_growth": growth(memory.samples, config.duration_s),
        "rss_peak_growth": growth(memory.samples, config.duration_s, max),
        "rss_first_bytes": memory.samples[0][1] if memory.samples else None,
        "rss_max_bytes": max(v for _, v in memory.samples) if memory.samples else None,
        "memory_samples": memory.samples,
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    minutes = range(len(result["per_minute"]))
    top.plot(minutes, [m["ok_p50_s"] for m in result["per_minute"]], marker="o", label="p50")
    top.plot(minutes, [m["ok_p99_s"] for m in result["per_minute"]], marker="o", label="p99")
    top.set_ylabel("latency (s)")
    top.set_title(f"soak: {result['config']['fraction']:.0%} of capacity ({result['rate_per_s']:.2f} req/s) "
                  f"{result['config']['pattern']}, {result['config']['duration_s'] / 60:g} min — {result['device']}")
    top.legend()
    t, rss = zip(*result["memory_samples"])
    bottom.plot([x / 60 for x in t], [r / 2**30 for r in rss], color="tab:purple")
    bottom.set_ylabel("tritonserver + stubs RSS (GiB)")
    bottom.set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from sweep import device_name, slug

    from tritonrag.common.atomic_files import atomic_write_text
    from tritonrag.server.launcher import ServerSettings, TritonServer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in dataclasses.fields(SoakConfig):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    parser.add_argument("--questions", default="auto", choices=["auto", "squad", "synthetic"])
    parser.add_argument("--out", type=Path, default=ROOT / "perf" / "results")
    args = parser.parse_args(argv)
    config = SoakConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SoakConfig)})
    ports = []
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    with TritonServer(ServerSettings(http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2])) as server:
        result = asyncio.run(run_soak(server.grpc_url, server.process.pid, load_questions(args.questions, 400), config))
        result["server_ready_after"] = server.is_ready()
    result.update(date=datetime.date.today().isoformat(), device=device_name(),
                  command="python perf/soak.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    passed = (result["soak"]["errors"] == 0 and result["soak"]["rejected"] == 0
              and result["rss_growth"] is not None and result["rss_growth"] <= 1.10 and result["server_ready_after"])
    result["passed"] = passed
    stem = f"{result['date']}_{slug(device_name())}_soak_{config.duration_s / 60:g}min_{config.pattern}"
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / f"{stem}.json", json.dumps(result, indent=1))
    plot(result, args.out / f"{stem}.png")
    print(json.dumps({k: result[k] for k in ("capacity", "rate_per_s", "soak", "per_minute", "rss_growth", "rss_peak_growth",
                                             "rss_first_bytes", "rss_max_bytes", "passed")}, indent=1))
    print(f"wrote {args.out / stem}.json and .png")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
