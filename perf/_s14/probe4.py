"""Scratch probe 4 (stop 14): L1 kernel with [B, D, N] tiles and 8-byte corpus words against the current one."""
import json, os, statistics, sys, time
import torch
sys.path.insert(0, "."); sys.path.insert(0, "perf/_s14")
from tritonrag import fused_topk
from l1b_kern import l1b
OUT = os.environ.get("OUT", "/tmp"); res = []
def log(**r):
    res.append(r); print(json.dumps(r), flush=True); json.dump(res, open(f"{OUT}/probe4.json", "w"), indent=1)
def ev_many(fn, reps=10, rounds=5):
    fn(); torch.cuda.synchronize(); out = []
    t = time.perf_counter()
    while time.perf_counter() - t < 0.15: fn()
    for _ in range(rounds):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps): fn()
        b.record(); b.synchronize(); out.append(a.elapsed_time(b) / reps)
    return statistics.median(out)
def corpus(n):
    x = torch.empty((n, 1024), dtype=torch.float16, device="cuda")
    for i in range(0, n, 1 << 20):
        x[i:i + (1 << 20)] = torch.nn.functional.normalize(torch.randn((min(1 << 20, n - i), 1024), device="cuda"), dim=1).half()
    return x
def new_keys(x, q, t):
    bn, bb, bd, w, st, pack = t
    n, batch = x.shape[0], q.shape[0]
    nt = -(-n // bn); qb = -(-batch // bb)
    cands = torch.empty((batch, nt * 10), dtype=torch.int64, device="cuda")
    l1b[(nt * qb,)](x, q, cands, n, batch, x.stride(0), q.stride(0), cands.stride(0), qb,
                    DIM=1024, K=10, BLOCK_N=bn, BLOCK_B=bb, BLOCK_D=bd, NUM_STAGES=st, PACK=pack, num_warps=w)
    return fused_topk.merge_runs(torch, cands, 10)
def overlap(a, b):
    return float((a.unsqueeze(2) == b.unsqueeze(1)).any(2).float().mean())
CFG = {8: [(32, 8, 32, 1, 3, True), (64, 8, 32, 2, 3, True), (128, 8, 32, 2, 3, True), (64, 8, 32, 2, 4, True), (64, 8, 16, 2, 3, False)],
       16: [(64, 16, 16, 2, 3, True), (64, 16, 32, 2, 3, True), (32, 16, 32, 1, 3, True)],
       32: [(64, 32, 8, 2, 3, True), (32, 32, 16, 1, 3, True), (128, 32, 16, 4, 3, True), (64, 32, 16, 2, 3, True)],
       4: [(64, 4, 32, 2, 3, True), (128, 4, 32, 4, 3, True)]}
for n in (1_000_000, 10_000_000):
    x = corpus(n)
    for batch in (8, 32, 16, 4):
        if n > 1_000_000 and batch in (16, 4): continue
        q = (torch.randn((batch, 1024), device="cuda") * 0.03).contiguous()
        ip = ev_many(lambda: fused_topk.topk_keys(torch, x, q, 10, "ip"))
        ref = fused_topk.topk_keys(torch, x, q, 10, "l1", half_l1=0)
        cur = ev_many(lambda: fused_topk.topk_keys(torch, x, q, 10, "l1"))
        log(part="l1", n=n, batch=batch, kind="ip", ms=ip)
        log(part="l1", n=n, batch=batch, kind="current", tiles=list(fused_topk.tiles_for("l1", fused_topk.query_block(batch, "l1"))), ms=cur, ratio=cur / ip,
            overlap=overlap(fused_topk.topk_keys(torch, x, q, 10, "l1"), ref))
        for t in CFG[batch]:
            try:
                got = new_keys(x, q, t)
                ms = ev_many(lambda: new_keys(x, q, t))
                log(part="l1", n=n, batch=batch, kind="bdn", tiles=list(t), ms=ms, ratio=ms / ip, overlap=overlap(got, ref))
            except Exception as e:
                log(part="l1", n=n, batch=batch, kind="bdn", tiles=list(t), error=repr(e)[:300])
    del x; torch.cuda.empty_cache()
