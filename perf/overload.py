"""Overload run: capacity, then `factor` x capacity for `burst_s`, then recovery.

1. Capacity: closed loop at `concurrency` clients for `probe_s`; answered requests/s and
   the normal latency.
2. Burst: open loop (Poisson by default) at factor x capacity for burst_s, sampling the
   resident memory of tritonserver and its stub processes every second.
3. Recovery, started the moment arrivals stop (while the burst's queue still drains): the
   same closed loop as in 1; recovered when a request sent then is answered within
   1.5 x the normal p90, and the answered rate over the recovery window.

    python perf/overload.py                       # starts the embedded default server itself
    python perf/overload.py --factor 3 --burst-s 60 --concurrency 2

Writes perf/results/<date>_<device>_overload_<config>.{json,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "perf"))

from inputs import load_questions  # noqa: E402
from loadgen import (MemorySampler, arrival_times, closed_loop, open_loop, peak_growth, summarize,  # noqa: E402
                     tree_rss_bytes)


@dataclasses.dataclass
class OverloadConfig:
    factor: float = 3.0
    burst_s: float = 60.0
    probe_s: float = 20.0
    recovery_s: float = 60.0
    concurrency: int = 2
    pattern: str = "poisson"
    max_tokens: int = 32
    top_k: int = 3


async def run_overload(url: str, server_pid: int, questions: list[str], config: OverloadConfig) -> dict:
    ask = {"max_tokens": config.max_tokens, "top_k": config.top_k}
    await closed_loop(url, questions[-50:], config.concurrency, 0.1, **ask)  # warm-up, not counted
    probe = await closed_loop(url, questions, config.concurrency, config.probe_s, **ask)
    capacity = summarize(probe, config.probe_s)
    if not capacity["ok"]:
        raise RuntimeError(f"no request answered while measuring capacity: {capacity}")
    normal_p90 = capacity["ok_p90_s"]
    rate = config.factor * capacity["answered_per_s"]
    times = arrival_times(rate, config.burst_s, config.pattern, seed=1)

    async with MemorySampler(lambda: tree_rss_bytes(server_pid)) as memory:
        burst_task = asyncio.ensure_future(open_loop(url, questions[::-1], times, **ask))
        await asyncio.sleep(config.burst_s)
        recovery_started = time.perf_counter()
        recovery = await closed_loop(url, questions, config.concurrency, config.recovery_s, **ask)
        burst = await burst_task
    recovered_after = next((o.sent_s for o in recovery if o.kind == "ok" and o.latency_s <= 1.5 * normal_p90), None)
    rss = [value for _, value in memory.samples]
    return {
        "config": dataclasses.asdict(config),
        "capacity": capacity,
        "burst_rate_per_s": rate,
        "burst": summarize(burst, config.burst_s),
        "recovery": summarize(recovery, config.recovery_s),
        "recovered_after_s": recovered_after,
        # the recovery loop's requests sent once latency was normal again: service as before?
        "recovery_after_drain": summarize(
            [o for o in recovery if recovered_after is not None and o.sent_s >= recovered_after],
            max(config.recovery_s - (recovered_after or 0.0), 1.0)),
        "recovery_wall_s": time.perf_counter() - recovery_started,
        "rss_start_bytes": rss[0] if rss else None,
        "rss_max_bytes": max(rss) if rss else None,
        "rss_end_bytes": rss[-1] if rss else None,
        # bounded = no growth once the queue is full: the second half's peak against the first's
        "rss_growth_second_half": peak_growth(memory.samples, config.burst_s),
        "memory_samples": memory.samples,
        "burst_outcomes": [dataclasses.asdict(o) for o in burst],
        "recovery_outcomes": [dataclasses.asdict(o) for o in recovery],
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    burst_s = result["config"]["burst_s"]
    colours = {"ok": "tab:green", "rejected": "tab:orange", "error": "tab:red"}
    for kind, colour in colours.items():
        points = [(o["sent_s"], o["latency_s"]) for o in result["burst_outcomes"] if o["kind"] == kind]
        if points:
            top.scatter(*zip(*points), s=8, c=colour, label=f"burst {kind} ({len(points)})")
    rec = [(o["sent_s"] + burst_s, o["latency_s"]) for o in result["recovery_outcomes"] if o["kind"] == "ok"]
    if rec:
        top.scatter(*zip(*rec), s=14, c="tab:blue", marker="x", label=f"recovery ok ({len(rec)})")
    top.axvline(burst_s, color="grey", ls="--", lw=1)
    top.set_ylabel("latency (s)")
    top.set_title(f"{result['config']['factor']:g}x capacity ({result['burst_rate_per_s']:.2f} req/s, "
                  f"{result['config']['pattern']}) for {burst_s:g} s, then recovery — {result['device']}")
    top.legend(loc="upper left", fontsize=8)
    t, rss = zip(*result["memory_samples"]) if result["memory_samples"] else ((), ())
    bottom.plot(t, [r / 2**30 for r in rss], color="tab:purple")
    bottom.axvline(burst_s, color="grey", ls="--", lw=1)
    bottom.set_ylabel("tritonserver + stubs RSS (GiB)")
    bottom.set_xlabel("seconds since the burst started")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from sweep import device_name, slug

    from tritonrag.common.atomic_files import atomic_write_text
    from tritonrag.server.launcher import ServerSettings, TritonServer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in dataclasses.fields(OverloadConfig):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    parser.add_argument("--questions", default="auto", choices=["auto", "squad", "synthetic"])
    parser.add_argument("--out", type=Path, default=ROOT / "perf" / "results")
    args = parser.parse_args(argv)
    config = OverloadConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(OverloadConfig)})
    questions = load_questions(args.questions, count=400)
    import socket

    ports = []
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    settings = ServerSettings(http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2])
    with TritonServer(settings) as server:
        result = asyncio.run(run_overload(server.grpc_url, server.process.pid, questions, config))
        result["server_ready_after"] = server.is_ready()
    result.update(date=datetime.date.today().isoformat(), device=device_name(),
                  command="python perf/overload.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    stem = f"{result['date']}_{slug(device_name())}_overload_x{config.factor:g}_{config.pattern}"
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / f"{stem}.json", json.dumps(result, indent=1))
    plot(result, args.out / f"{stem}.png")
    brief = {k: result[k] for k in ("burst_rate_per_s", "recovered_after_s", "rss_start_bytes", "rss_max_bytes",
                                    "server_ready_after")}
    print(json.dumps({"capacity": result["capacity"], "burst": result["burst"], "recovery": result["recovery"],
                      **brief}, indent=1))
    print(f"wrote {args.out / stem}.json and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
