"""Per-stage queue and compute time from Triton's statistics API, between two snapshots.

perf_analyzer reports the client's view; the statistics API says where the time went
inside the server: per model, how many requests succeeded or failed, how long they
waited in the queue, how long the model computed, and how many requests each
execution held (the dynamic batch size actually formed).
"""

from __future__ import annotations

STAT_KINDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


def snapshot(url: str, protocol: str = "grpc") -> dict[str, dict]:
    """{model: {"inference_count", "execution_count", "<kind>_count", "<kind>_ns"}} now, all models."""
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    client = module.InferenceServerClient(url)
    try:
        raw = client.get_inference_statistics(as_json=True) if protocol == "grpc" else \
            client.get_inference_statistics()
    finally:
        client.close()
    return parse_statistics(raw)


def parse_statistics(raw: dict) -> dict[str, dict]:
    """Flatten the API's JSON (gRPC gives its uint64s as strings, HTTP as numbers)."""
    models: dict[str, dict] = {}
    for entry in raw.get("model_stats", []):
        stats = entry.get("inference_stats", {})
        row = {"inference_count": int(entry.get("inference_count", 0) or 0),
               "execution_count": int(entry.get("execution_count", 0) or 0)}
        for kind in STAT_KINDS:
            row[f"{kind}_count"] = int(stats.get(kind, {}).get("count", 0) or 0)
            row[f"{kind}_ns"] = int(stats.get(kind, {}).get("ns", 0) or 0)
        models[entry["name"]] = row
    return models


def breakdown(before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict]:
    """Per model that served requests in between: counts, mean queue/compute ms per request, mean batch."""
    result = {}
    for model, now in after.items():
        then = before.get(model, {})
        d = {key: value - then.get(key, 0) for key, value in now.items()}
        if d["success_count"] + d["fail_count"] == 0:
            continue
        compute_ns = d["compute_input_ns"] + d["compute_infer_ns"] + d["compute_output_ns"]
        result[model] = {
            "success": d["success_count"],
            "fail": d["fail_count"],
            "queue_ms": d["queue_ns"] / max(d["queue_count"], 1) / 1e6,
            "compute_ms": compute_ns / max(d["compute_infer_count"], 1) / 1e6,
            # the server's whole time per successful request (queue + compute + scheduling)
            "request_ms": d["success_ns"] / max(d["success_count"], 1) / 1e6,
            "executions": d["execution_count"],
            "mean_batch": d["inference_count"] / d["execution_count"] if d["execution_count"] else None,
        }
    return result


def pipeline_overhead(top: str, stages: dict[str, dict], p50_ms: float | None = None) -> dict:
    """What a pipeline model (ensemble or BLS) adds over its stages.

    `server_ms`: the pipeline model's own time per request minus its stages' (queue + compute),
    i.e. the wiring inside the server. With `p50_ms` (the client's p50): the p50 over the
    sum of the stages' compute, and over their compute plus queue (the batchers' delays).
    """
    if top not in stages:
        return {}
    parts = {m: s for m, s in stages.items() if m != top}
    compute = sum(s["compute_ms"] for s in parts.values())
    queue = sum(s["queue_ms"] for s in parts.values())
    out = {"stages_compute_ms": compute, "stages_queue_ms": queue,
           "server_ms": stages[top]["request_ms"] - compute - queue}
    if p50_ms is not None:
        out["p50_over_compute_ms"] = p50_ms - compute
        out["p50_over_compute_and_queue_ms"] = p50_ms - compute - queue
    return out
