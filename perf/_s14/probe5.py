"""Scratch probe 5 (stop 14): L1 kernels against exact torch L1 (fp32 cdist) on 200K rows; then timing of the right ones."""
import json, os, statistics, sys, time
import torch
sys.path.insert(0, "."); sys.path.insert(0, "perf/_s14")
from tritonrag import fused_topk
from l1b_kern import l1b
OUT = os.environ.get("OUT", "/tmp"); res = []
def log(**r):
    res.append(r); print(json.dumps(r), flush=True); json.dump(res, open(f"{OUT}/probe5.json", "w"), indent=1)
def ev_many(fn, reps=10, rounds=5):
    fn(); torch.cuda.synchronize(); out = []
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
def truth(x, q, k=10):
    best = []
    for i in range(0, x.shape[0], 65536):
        d = torch.cdist(q, x[i:i + 65536].float(), p=1)
        v, j = torch.topk(-d, k, dim=1); best.append((v, j + i))
    v = torch.cat([b[0] for b in best], 1); j = torch.cat([b[1] for b in best], 1)
    return torch.gather(j, 1, torch.topk(v, k, dim=1).indices)
def rows_of(keys):
    return (0xFFFFFFFF - (keys & 0xFFFFFFFF)).to(torch.int64)
def new_keys(x, q, t):
    bn, bb, bd, w, st, pack, asm = t
    n, batch = x.shape[0], q.shape[0]
    nt = -(-n // bn); qb = -(-batch // bb)
    cands = torch.empty((batch, nt * 10), dtype=torch.int64, device="cuda")
    l1b[(nt * qb,)](x, q, cands, n, batch, x.stride(0), q.stride(0), cands.stride(0), qb,
                    DIM=1024, K=10, BLOCK_N=bn, BLOCK_B=bb, BLOCK_D=bd, NUM_STAGES=st, PACK=pack, ASM=asm, num_warps=w)
    return fused_topk.merge_runs(torch, cands, 10)
def overlap(a, b):
    return float((a.unsqueeze(2) == b.unsqueeze(1)).any(2).float().mean())
phase = sys.argv[1]
if phase == "check":
    x = corpus(200_000)
    for batch in (8, 32):
        q = (torch.randn((batch, 1024), device="cuda") * 0.03).contiguous()
        want = truth(x, q)
        bb = fused_topk.query_block(batch, "l1")
        for name, fn in [("current", lambda: fused_topk.topk_keys(torch, x, q, 10, "l1")),
                         ("fp32_asm", lambda: fused_topk.topk_keys(torch, x, q, 10, "l1", half_l1=0)),
                         ("fp32_noasm", lambda: (setattr(fused_topk, "L1_ASM", False), fused_topk.topk_keys(torch, x, q, 10, "l1", half_l1=0), setattr(fused_topk, "L1_ASM", True))[1])]:
            log(part="check", batch=batch, kind=name, tiles=list(fused_topk.tiles_for("l1", bb)), overlap=overlap(rows_of(fn()), want))
        cf = [(64, 8, 16, 2, 3, False, True), (64, 8, 16, 2, 3, False, False), (64, 8, 32, 2, 3, True, True), (64, 8, 32, 2, 3, 2, True), (128, 8, 32, 2, 3, 2, True)] if batch == 8 else \
             [(64, 32, 8, 2, 3, False, True), (64, 32, 8, 2, 3, 2, True), (128, 32, 16, 4, 3, 2, True), (64, 32, 8, 2, 3, False, False)]
        for t in cf:
            try:
                log(part="check", batch=batch, kind="bdn", tiles=list(t), overlap=overlap(rows_of(new_keys(x, q, t)), want))
            except Exception as e:
                log(part="check", batch=batch, kind="bdn", tiles=list(t), error=repr(e)[:300])
else:
    cfgs = json.loads(sys.argv[2])
    for n in (1_000_000, 10_000_000):
        x = corpus(n)
        for batch, tl_ in cfgs.items():
            q = (torch.randn((int(batch), 1024), device="cuda") * 0.03).contiguous()
            ip = ev_many(lambda: fused_topk.topk_keys(torch, x, q, 10, "ip"))
            log(part="time", n=n, batch=int(batch), kind="ip", ms=ip)
            cur = ev_many(lambda: fused_topk.topk_keys(torch, x, q, 10, "l1"))
            log(part="time", n=n, batch=int(batch), kind="current", ms=cur, ratio=cur / ip)
            for t in tl_:
                ms = ev_many(lambda: new_keys(x, q, t))
                log(part="time", n=n, batch=int(batch), kind="bdn", tiles=t, ms=ms, ratio=ms / ip)
        del x; torch.cuda.empty_cache()
