"""The autoscaler's and the dashboard's queries read metrics that a live tritonserver exports.

Scrapes the session server's Prometheus endpoint (the launcher's metrics port, as in the
pods and compose replicas) and evaluates the prometheus-adapter rule's arithmetic on two
scrapes around real requests.
"""

import json
import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tritonrag_client import RagClient

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("embedder", "retriever", "reranker", "generator")
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
GPU_FAMILIES = ROOT / "deploy" / "grafana" / "triton-2.51-gpu-metric-families.txt"


def scrape(server) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} from the server's /metrics."""
    url = f"http://{server.settings.host}:{server.settings.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    # Parsed by hand: Prometheus stores series under the names as exposed, while
    # prometheus_client's parser renames counters to *_total (OpenMetrics) and so would
    # check names that no PromQL query here uses.
    samples: dict[str, dict[tuple, float]] = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match:
            name, labels, value = match.groups()
            key = tuple(sorted(LABEL.findall(labels or "")))
            samples.setdefault(name, {})[key] = float(value)
    return samples


def queried(text: str) -> list[tuple[str, str]]:
    """(metric name, label matchers) for every selector in a PromQL text."""
    return re.findall(r"\b(nv_[a-z_]+)\b(?:\{([^}]*)\})?", text)


def model_values(matchers: str) -> list[str]:
    match = re.search(r'model(=~?)"([^"]+)"', matchers or "")
    if not match:
        return []
    op, value = match.groups()
    return value.split("|") if op == "=~" and ".*" not in value else ([] if op == "=~" else [value])


def adapter_rule() -> dict:
    values = yaml.safe_load((ROOT / "deploy/kubernetes/monitoring/prometheus-adapter-values.yaml").read_text())
    return values["rules"]["custom"][0]


def dashboard_queries() -> list[str]:
    dashboard = json.loads((ROOT / "deploy/grafana/tritonrag.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]] + \
        [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]


def exported_models(samples, name) -> set[str]:
    return {dict(labels).get("model") for labels in samples.get(name, {})}


def test_hpa_and_dashboard_metrics_exist_in_the_live_export(server):
    samples = scrape(server)
    gpu_families = {line.split()[0] for line in GPU_FAMILIES.read_text().splitlines() if not line.startswith("#")}
    texts = [adapter_rule()["seriesQuery"], adapter_rule()["metricsQuery"]] + dashboard_queries()
    checked = set()
    for text in texts:
        for name, matchers in queried(text):
            if name.startswith("nv_gpu_"):
                assert name in gpu_families, f"{name} is not a Triton GPU metric family"
                continue
            assert name in samples, f"{name} (in {text!r}) is not exported by tritonserver"
            for model in model_values(matchers):
                assert model in exported_models(samples, name), f"{name} has no model={model!r} series"
            quantile = re.search(r'quantile="([^"]+)"', matchers or "")
            if quantile:
                assert any(dict(k).get("quantile") == quantile.group(1) for k in samples[name]), name
            checked.add(name)
    assert {"nv_inference_queue_duration_us", "nv_inference_request_success",
            "nv_inference_request_summary_us"} <= checked


def queue_ms_per_request(before, after) -> float:
    """The adapter rule's value for one pod: Σ over stages of Δqueue_us / Δsuccess, in ms."""
    def delta(name, stage):
        (now,) = [v for k, v in after[name].items() if dict(k)["model"] == stage]
        (then,) = [v for k, v in before[name].items() if dict(k)["model"] == stage]
        return now - then

    return sum(delta("nv_inference_queue_duration_us", stage)
               / max(delta("nv_inference_request_success", stage), 0.001) for stage in STAGES) / 1000


def stats_queue_ms_per_request(before, after) -> float:
    total = 0.0
    for stage in STAGES:
        ns = after[stage]["queue"]["ns"] - before[stage]["queue"]["ns"]
        count = after[stage]["success"]["count"] - before[stage]["success"]["count"]
        total += ns / max(count, 1) / 1e6
    return total


def stage_stats(grpc_client):
    out = {}
    for stage in STAGES:
        stats = grpc_client.get_inference_statistics(stage, as_json=True)["model_stats"][0]["inference_stats"]
        out[stage] = {k: {f: int(v.get(f, 0)) for f in ("count", "ns")} for k, v in stats.items()}
    return out


def test_autoscaling_signal_under_concurrent_load_matches_tritons_statistics(server, grpc_client):
    samples_before, stats_before = scrape(server), stage_stats(grpc_client)
    with RagClient(server.grpc_url, protocol="grpc") as client:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: client.ask(f"What does the with statement do? ({i})", max_tokens=4),
                                    range(8)))
    assert all(a.answer for a in answers)
    samples_after, stats_after = scrape(server), stage_stats(grpc_client)
    signal = queue_ms_per_request(samples_before, samples_after)
    reference = stats_queue_ms_per_request(stats_before, stats_after)
    print(f"\nautoscaling signal after 8 concurrent requests: {signal:.1f} ms queued per request "
          f"(statistics API: {reference:.1f} ms)")
    # 8 requests at once: each stage batches them, and the generator queue holds requests
    # while a batch runs, so some queueing is certain.
    assert signal > 0
    assert signal == pytest.approx(reference, rel=0.05, abs=1.0)
