"""Scratch (not kept): 1M-element long vectors from pinned host memory, wall per call (median of
50 after 10), current long_distance against raw-copy variants: both copies on one stream, on two
streams at once, and cached device buffers."""
import json, os, statistics, sys, time
import cupy as cp
import numpy as np
sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
from tritonrag import longvec
from tritonrag.gpu_search import pinned_empty

def wall(fn, reps=50):
    for _ in range(10): fn()
    cp.cuda.Device().synchronize()
    t = []
    for _ in range(reps):
        s = time.perf_counter(); fn(); t.append((time.perf_counter() - s) * 1e6)
        cp.cuda.Device().synchronize()
    return round(statistics.median(t), 1)

H2D = cp.cuda.runtime.memcpyHostToDevice
rows = []
host = pinned_empty((1 << 31,), np.uint8); dev = cp.empty(1 << 31, cp.uint8)
s = time.perf_counter(); dev.set(host); cp.cuda.Device().synchronize(); h2d = (1 << 31) / (time.perf_counter() - s) / 1e9
s = time.perf_counter(); dev.set(host); cp.cuda.Device().synchronize(); h2d = max(h2d, (1 << 31) / (time.perf_counter() - s) / 1e9)
del host, dev
for n in (1_000_000, 4_000_000, 10_000_000):
    ha, hb = pinned_empty((n,), np.float32), pinned_empty((n,), np.float32)
    ha[:] = np.random.default_rng(0).standard_normal(n); hb[:] = np.random.default_rng(1).standard_normal(n)
    nbytes = 2 * n * 4
    xa, xb = cp.empty(n, cp.float32), cp.empty(n, cp.float32)
    s1, s2 = cp.cuda.Stream(non_blocking=True), cp.cuda.Stream(non_blocking=True)
    ev = cp.cuda.Event(disable_timing=True)
    blocks = 8 * cp.cuda.Device().attributes["MultiProcessorCount"]
    cur = cp.cuda.get_current_stream()
    fin = longvec._Finish.get(cp, 0, cur, blocks)
    def one_stream():
        cp.cuda.runtime.memcpyAsync(xa.data.ptr, ha.ctypes.data, n * 4, H2D, cur.ptr)
        cp.cuda.runtime.memcpyAsync(xb.data.ptr, hb.ctypes.data, n * 4, H2D, cur.ptr)
        longvec._reduce(cp, xa, xb, "l2", fin.partial, fin); cur.synchronize(); return fin.result.copy()
    def two_streams():
        ev0 = cur.record()
        s1.wait_event(ev0); s2.wait_event(ev0)
        cp.cuda.runtime.memcpyAsync(xa.data.ptr, ha.ctypes.data, n * 4, H2D, s1.ptr)
        cp.cuda.runtime.memcpyAsync(xb.data.ptr, hb.ctypes.data, n * 4, H2D, s2.ptr)
        cur.wait_event(s1.record()); cur.wait_event(s2.record())
        longvec._reduce(cp, xa, xb, "l2", fin.partial, fin); cur.synchronize(); return fin.result.copy()
    def interleaved():  # halves of a and b alternate, one stream: a0 b0 a1 b1, kernel after
        h = n // 2
        for part in (slice(0, h), slice(h, n)):
            for hv, xv in ((ha, xa), (hb, xb)):
                cp.cuda.runtime.memcpyAsync(xv[part].data.ptr, hv[part].ctypes.data, (part.stop - part.start) * 4, H2D, cur.ptr)
        longvec._reduce(cp, xa, xb, "l2", fin.partial, fin); cur.synchronize(); return fin.result.copy()
    ref = longvec.long_distance(ha, hb, "l2", "cuda:0", budget=4 << 30)
    r = dict(n=n, h2d_GBps=round(h2d, 2), current_us=wall(lambda: longvec.long_distance(ha, hb, "l2", "cuda:0", budget=4 << 30)),
             copy_only_one_stream_us=wall(lambda: (cp.cuda.runtime.memcpyAsync(xa.data.ptr, ha.ctypes.data, n * 4, H2D, cur.ptr), cp.cuda.runtime.memcpyAsync(xb.data.ptr, hb.ctypes.data, n * 4, H2D, cur.ptr), cur.synchronize())),
             one_stream_us=wall(one_stream), two_streams_us=wall(two_streams), interleaved_us=wall(interleaved))
    r["same"] = [abs(longvec._finish("l2", f()) - ref) <= 1e-9 * abs(ref) for f in (one_stream, two_streams)]
    for k in list(r):
        if k.endswith("_us"): r[k.replace("_us", "_h2d_fraction")] = round(nbytes / r[k] / 1e3 / h2d, 3)
    rows.append(r); print(json.dumps(r), flush=True)
json.dump(dict(command="python perf/_s15_longvec.py $OUT (scratch, not kept)", device=cp.cuda.runtime.getDeviceProperties(0)["name"].decode(),
               date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), rows=rows), open(os.path.join(sys.argv[1], "longvec.json"), "w"), indent=1)
