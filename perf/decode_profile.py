"""Where a decode step's time goes: per-kernel profile, GEMM and attention microbenchmarks,
decode-step variants and prefill timings, on one GPU with the dummy Qwen2.5-1.5B shape.

  python perf/decode_profile.py --out perf/results            # ~3 min on an H100

Sections (each written to the JSON as soon as it is measured, so a cut-off run keeps them):
  skinny     the skinny Triton GEMM (swap AB, split-K) against F.linear per projection and M = 32..256
             (gate_up_silu: the gate/up product fused with silu * up, against F.linear + silu_mul),
             every candidate configuration timed (not in the default sections: ~2.5 min;
             `--sections skinny --tag skinny-gemm`)
  gemm       every per-layer projection at M = 32..256, row-major ([N, K], cuBLAS "TN") and
             column-major weights, cuBLAS and cuBLASLt: us per call and GB/s of weights read
             (28 distinct weight copies per shape, so the 50 MB L2 does not serve them)
  attention  28 layers of decode attention at batch 32/128/256 over a length bucket of 512:
             SDPA with the additive mask (before) against the split-KV Triton kernel
  variants   the whole decode step (CUDA graph) per engine variant, with its capture time
  profile    torch.profiler kernel tables of one step (eager and graph) at batch 32 and 128
  prefill    ms for 1 / 8 / 32 prompts of 256 tokens (the scheduler prefills up to 32 at once)
  serving    the continuous batcher at concurrency 64 and 128 (generation_bench.serve)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def graph_time_us(fn, reps: int = 10) -> float:
    """Mean time of `fn` captured once in a CUDA graph and replayed (skinny_gemm.graph_time_us)."""
    from tritonrag.generation.engine.skinny_gemm import graph_time_us as timed

    return timed(fn, reps)


def gemm_section(hidden=1536, inter=8960, heads=12, kv_heads=2, dim=128, layers=28):
    import torch
    import torch.nn.functional as F

    shapes = {"qkv": ((heads + 2 * kv_heads) * dim, hidden), "o": (hidden, heads * dim),
              "gate_up": (2 * inter, hidden), "down": (hidden, inter)}
    rows = []
    for name, (n, k) in shapes.items():
        weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(layers)]
        for layout in ("row", "col"):
            ws = weights if layout == "row" else [w.t().contiguous().t() for w in weights]
            for blas in ("cublas", "cublaslt"):
                torch.backends.cuda.preferred_blas_library(blas)
                for m in (32, 64, 128, 256):
                    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                    us = graph_time_us(lambda: [F.linear(x, w) for w in ws]) / layers
                    rows.append({"proj": name, "N": n, "K": k, "M": m, "layout": layout, "blas": blas,
                                 "us": round(us, 2), "GBps": round(n * k * 2 / us / 1e3, 1)})
            del ws
        del weights
    torch.backends.cuda.preferred_blas_library("cublas")
    return rows


def skinny_section(hidden=1536, inter=8960, heads=12, kv_heads=2, dim=128, layers=28, vocab=151936,
                   ms=(32, 64, 128, 256), budget_s=150.0, only=None, wide_only=False):
    """The skinny Triton GEMM (`tritonrag.generation.engine.skinny_gemm`) against F.linear (cuBLAS) per decode
    projection and M: every candidate configuration timed in a CUDA graph over 28 distinct weight
    copies (one for the 467 MB lm_head), checked against F.linear, the best kept per (shape, M)."""
    import torch
    import torch.nn.functional as F

    from tritonrag.generation.engine.skinny_gemm import candidates, default_config, graph_time_us, skinny_linear

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    from tritonrag.generation.engine.skinny_gemm import fused_candidates, gate_up_silu
    from tritonrag.generation.engine.triton_lang_ops import silu_mul

    # gate_up_silu: gate/up product + silu * up, fused (Triton) against F.linear then silu_mul
    shapes = {"gate_up_silu": (2 * inter, hidden, False), "gate_up": (2 * inter, hidden, False),
              "down": (hidden, inter, False),
              "lm_head": (vocab, hidden, False), "qkv": ((heads + 2 * kv_heads) * dim, hidden, True),
              "o": (hidden, heads * dim, False)}
    rows = []
    for name, (n, k, has_bias) in shapes.items():
        if only and name not in only:
            continue
        copies = 1 if name == "lm_head" else layers
        weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
        biases = [torch.randn(n, device="cuda", dtype=torch.bfloat16) if has_bias else None for _ in range(copies)]
        pairs = list(zip(weights, biases))
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            fused = name == "gate_up_silu"
            if fused:
                def base(w, b):
                    return silu_mul(F.linear(x, w))

                def mine(w, b, config):
                    return gate_up_silu(x, w, config)
                configs = fused_candidates(m, n // 2, k, sms)
                heuristic = configs[0]
            else:
                def base(w, b):
                    return F.linear(x, w, b)

                def mine(w, b, config):
                    return skinny_linear(x, w, b, config)
                heuristic = default_config(m, n, k, sms)
                configs = [heuristic] + [c for c in candidates(m, n, k, sms) if c != heuristic
                                         and (c.block_n == 256 or not wide_only)]
            ref = base(weights[0], biases[0]).float()
            cublas = graph_time_us(lambda: [base(w, b) for w, b in pairs]) / copies
            tried = []
            pair_start, pair_budget = time.perf_counter(), budget_s / (len(only or shapes) * len(ms))
            for config in configs:
                if time.perf_counter() - pair_start > pair_budget and tried:
                    tried.append({"skipped": "budget", "left": len(configs) - len(tried)})
                    break
                try:
                    err = float((mine(weights[0], biases[0], config).float() - ref).abs().max())
                    us = graph_time_us(lambda: [mine(w, b, config) for w, b in pairs]) / copies
                except Exception as exc:  # noqa: BLE001 — out of shared memory, say: record, go on
                    tried.append({"config": list(config.__dict__.values()), "error": str(exc)[:200]})
                    continue
                tried.append({"config": list(config.__dict__.values()), "us": round(us, 2),
                              "max_abs_err": round(err, 4)})
            ok = [t for t in tried if "us" in t]
            best = min(ok, key=lambda t: t["us"]) if ok else None
            weight_bytes = n * k * 2
            row = {"proj": name, "N": n, "K": k, "M": m, "bias": has_bias, "copies": copies,
                   "cublas_us": round(cublas, 2), "cublas_GBps": round(weight_bytes / cublas / 1e3, 1),
                   "heuristic_us": ok[0]["us"] if ok and tried[0] is ok[0] else None,
                   "best": best, "best_GBps": round(weight_bytes / best["us"] / 1e3, 1) if best else None,
                   "speedup": round(cublas / best["us"], 3) if best else None,
                   "config_fields": list(heuristic.__dict__.keys()), "tried": tried}
            rows.append(row)
            print("skinny", json.dumps({key: v for key, v in row.items() if key != "tried"}), flush=True)
        del weights, biases, pairs
        torch.cuda.empty_cache()
    return rows


def attention_section(layers=28, kv_heads=2, group=6, dim=128, bucket=512):
    import torch
    import torch.nn.functional as F

    from tritonrag.generation.engine.flash_decode import decode_attention, plan_splits

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows_out = []
    cache = torch.randn(layers, 256, 2 * kv_heads, bucket, dim, device="cuda", dtype=torch.bfloat16)
    for batch in (32, 128, 256):
        q = torch.randn(batch, kv_heads, group, dim, device="cuda", dtype=torch.bfloat16)
        for case, lengths in (("all 321", torch.full((batch,), 321, device="cuda")),
                              ("ragged 1..512", torch.randint(1, bucket + 1, (batch,), device="cuda"))):
            key = torch.arange(bucket, device="cuda")
            mask = torch.zeros(batch, bucket, device="cuda", dtype=torch.bfloat16)
            mask = mask.masked_fill(key[None] >= lengths[:, None], float("-inf"))[:, None, None]
            split = plan_splits(batch, kv_heads, bucket, sms)

            def sdpa():
                for layer in range(layers):
                    c = cache[layer, :batch]
                    F.scaled_dot_product_attention(q, c[:, :kv_heads], c[:, kv_heads:], attn_mask=mask, scale=0.088)

            def flash(split_len=split):
                for layer in range(layers):
                    decode_attention(q, cache[layer, :batch], lengths, 0.088, split_len)

            kv_bytes = int(lengths.sum()) * 2 * kv_heads * dim * 2 * layers
            row = {"batch": batch, "lengths": case, "split_len": split, "kv_MB_read_needed": round(kv_bytes / 1e6, 1),
                   "sdpa_us_per_layer": round(graph_time_us(sdpa) / layers, 2),
                   "triton_us_per_layer": round(graph_time_us(flash) / layers, 2)}
            for alt in (64, 128, 256, 512):
                row[f"triton_split{alt}_us"] = round(graph_time_us(lambda: flash(alt)) / layers, 2)
            rows_out.append(row)
            print("attention", json.dumps(row), flush=True)
    return rows_out


def kernel_table(prof, steps: int, top: int = 30) -> list[dict]:
    # CUDA activity only: every event is a kernel (or a memcpy/memset), none an enclosing op
    events = [e for e in prof.key_averages() if getattr(e, "device_time_total", 0) > 0]
    events.sort(key=lambda e: -e.device_time_total)
    total = sum(e.device_time_total for e in events)
    out = []
    for e in events[:top]:
        out.append({"kernel": e.key[:120], "calls_per_step": round(e.count / steps, 1),
                    "us_per_step": round(e.device_time_total / steps, 1),
                    "share": round(e.device_time_total / total, 3) if total else None})
    out.append({"kernel": "TOTAL (all kernels)", "us_per_step": round(total / steps, 1)})
    return out


def profile_step(engine, batch: int, kv_len: int, graphs: bool, steps: int = 5):
    import torch
    from torch.profiler import ProfilerActivity, profile

    tokens, positions = [1] * batch, [kv_len] * batch
    saved = engine._graphs
    if not graphs:
        engine._graphs = {}
    try:
        for _ in range(3):
            engine.decode(tokens, positions)
        torch.cuda.synchronize()
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                engine.decode(tokens, positions)
            torch.cuda.synchronize()
        wall_us = (time.perf_counter() - start) / steps * 1e6
    finally:
        engine._graphs = saved
    wall = {"kernel": "WALL per step (profiled, incl. host)", "us_per_step": round(wall_us, 1)}
    return [wall] + kernel_table(prof, steps)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dummy:qwen2.5-1.5b-instruct")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--tag", default="decode-profile")
    parser.add_argument("--sections", nargs="+", default=["attention", "variants", "profile", "prefill", "serving",
                                                         "gemm"])
    parser.add_argument("--variants", nargs="+",
                        default=["sdpa", "triton", "triton+compile", "sdpa+compile"],
                        help="attention sdpa|triton, +compile (torch.compile), "
                             "+skinny / +auto / +cublas (decode GEMMs: Triton, measured per bucket, cuBLAS)")
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--kv-len", type=int, default=320, help="cached positions per row in the step timings")
    parser.add_argument("--serve-variant", default="triton")
    parser.add_argument("--profile-all", action="store_true", help="kernel tables of every variant")
    parser.add_argument("--skinny-budget-s", type=float, default=150, help="time for the skinny GEMM sweep")
    parser.add_argument("--skinny-only", nargs="+", help="projections swept (default all)")
    parser.add_argument("--skinny-ms", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--skinny-wide-only", action="store_true", help="only the 256-row weight tiles")
    parser.add_argument("--deadline-s", type=float, default=250)
    args = parser.parse_args(argv)

    import torch

    from generation_bench import device_tag, peak_bandwidth, serve, step_times
    from tritonrag.generation.engine import ContinuousBatcher, DecodeEngine
    from tritonrag.models import sources as model_sources

    t0 = time.perf_counter()
    device = torch.device("cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{dt.date.today().isoformat()}_{device_tag(device)}_{args.tag}.json"
    result = {"command": " ".join([sys.executable] + sys.argv), "date": dt.datetime.now(dt.timezone.utc).isoformat(),
              "device": torch.cuda.get_device_name(device), "torch": torch.__version__, "model": args.model,
              "max_len": args.max_len, "kv_len": args.kv_len, "errors": {}}

    def save():
        result["elapsed_s"] = round(time.perf_counter() - t0, 1)
        path.write_text(json.dumps(result, indent=2) + "\n")

    def section(name, fn):
        if name not in args.sections:
            return
        if time.perf_counter() - t0 > args.deadline_s:
            result["errors"][name] = "skipped: deadline"
            return save()
        start = time.perf_counter()
        try:
            result[name] = fn()
        except Exception:  # noqa: BLE001 — keep the other sections
            result["errors"][name] = traceback.format_exc()[-3000:]
            print(name, "failed", result["errors"][name], flush=True)
        result.setdefault("section_s", {})[name] = round(time.perf_counter() - start, 1)
        save()
        print("section", name, "done in", result["section_s"][name], "s", flush=True)

    section("skinny", lambda: skinny_section(budget_s=args.skinny_budget_s, only=args.skinny_only,
                                             ms=tuple(args.skinny_ms), wide_only=args.skinny_wide_only))
    section("attention", attention_section)
    if not set(args.sections) & {"variants", "profile", "prefill", "serving"}:   # kernels only: no model
        section("gemm", gemm_section)
        print("wrote", path)
        return
    model = model_sources.load_model(args.model, device, torch.bfloat16, causal=True)
    bandwidth = peak_bandwidth(device)
    result["peak_bandwidth_GBps"] = round(bandwidth / 1e9, 1)
    slots = max(args.batches)
    engines = {}

    def build(variant):
        parts = variant.split("+")
        start = time.perf_counter()
        gemm = next((g for g in ("cublas", "auto") if g in parts), "triton" if "skinny" in parts else "cublas")
        engine = DecodeEngine.from_hf(model, slots=slots, max_len=args.max_len, attention=parts[0], gemm=gemm,
                                      compile="compile" in parts)
        return engine, round(time.perf_counter() - start, 1)

    def variants():
        out = {}
        for variant in args.variants:
            if time.perf_counter() - t0 > args.deadline_s * 0.6:
                out[variant] = "skipped: deadline"
                continue
            try:
                engine, build_s = build(variant)
            except Exception:  # noqa: BLE001
                out[variant] = traceback.format_exc()[-2000:]
                continue
            rows = step_times(engine, args.batches, args.kv_len, 0, 50, device)
            for row in rows:
                row["roofline_ms"] = round(row["bytes_per_step"] / bandwidth * 1000, 3)
            out[variant] = {"build_s": build_s, "capture_s": round(engine.warmup_s, 1), "steps": rows,
                            "gemm": engine.gemm, "gemm_auto_timings": engine.gemm_timings}
            print("variant", variant, json.dumps(out[variant]), flush=True)
            result["variants"] = out
            save()
            if variant in ("sdpa", args.serve_variant) or args.profile_all:
                engines[variant] = engine
            del engine
        return out

    section("variants", variants)

    def profiles():
        out = {}
        for variant, engine in engines.items():
            for batch in (32, 128):
                for graphs in (False, True):
                    key = f"{variant} batch {batch} {'graph' if graphs else 'eager'}"
                    out[key] = profile_step(engine, batch, args.kv_len, graphs)
        return out

    section("profile", profiles)

    def prefill():
        import random

        engine = engines.get(args.serve_variant) or next(iter(engines.values()))
        out = []
        for n in (1, 8, 32):
            prompts = [[random.randrange(1000) for _ in range(256)] for _ in range(n)]
            engine.prefill(list(range(n)), prompts)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(3):
                engine.prefill(list(range(n)), prompts)
            torch.cuda.synchronize()
            ms = (time.perf_counter() - start) / 3 * 1000
            flops = 2 * n * 256 * sum(t.numel() for t in (engine.w.layers[0].qkv, engine.w.layers[0].o,
                                                            engine.w.layers[0].gate_up, engine.w.layers[0].down)) \
                * engine.w.n_layers
            out.append({"prompts": n, "tokens": n * 256, "ms": round(ms, 2),
                        "matmul_TFLOPs": round(flops / ms / 1e9, 1)})
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            engine.prefill(list(range(32)), prompts)
            torch.cuda.synchronize()
        return {"timings": out, "kernels_32x256": kernel_table(prof, 1, top=20)}

    section("prefill", prefill)

    def serving():
        engine = engines.get(args.serve_variant)
        out = []
        for concurrency, overlap in ((64, True), (128, True), (128, False)):
            batcher = ContinuousBatcher(engine, max_batch=concurrency, overlap=overlap)
            batcher.start()
            serve(batcher, concurrency, concurrency, 256, 128, 32000, seed=1)
            decode_s = [0.0]
            original = engine.decode

            def timed(*a, **k):
                start = time.perf_counter()
                res = original(*a, **k)
                res[1].tolist()
                decode_s[0] += time.perf_counter() - start
                return res

            engine.decode = timed
            prefill_s = [0.0]
            original_prefill = engine.prefill

            def timed_prefill(*a, **k):
                start = time.perf_counter()
                res = original_prefill(*a, **k)
                res.float().sum().item()
                prefill_s[0] += time.perf_counter() - start
                return res

            engine.prefill = timed_prefill
            steps = batcher.steps
            row = serve(batcher, concurrency, concurrency * 4, 256, 128, 32000, seed=2)
            engine.decode, engine.prefill = original, original_prefill
            batcher.stop()
            row.update({"overlap": overlap, "decode_wall_s": round(decode_s[0], 3),
                        "prefill_wall_s": round(prefill_s[0], 3),
                        "steps": batcher.steps - steps})
            out.append(row)
            print("serving", json.dumps(row), flush=True)
        return out

    section("serving", serving)
    engines.clear()
    del model
    torch.cuda.empty_cache()
    section("gemm", gemm_section)
    save()
    print("wrote", path)


if __name__ == "__main__":
    main()
