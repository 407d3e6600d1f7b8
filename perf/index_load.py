"""How long `load_index` takes for a large index: first load (hashes all files) vs later loads.

Writes a synthetic index of N passages x d float32 vectors (random vectors, short texts,
BM25 over them), then times `load_index` three ways: the first load (full SHA-256 check,
writes verified.json), a later load (stat check only, vectors memory-mapped) and
`verify="full"`. Writes results/<date>_<device>_index_load.json.

    .venv/bin/python perf/index_load.py --count 1000000 --dim 384
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "perf"))

from tritonrag.index.bm25 import BM25Index, TokenizerConfig  # noqa: E402
from tritonrag.index.corpus import Passage  # noqa: E402
from tritonrag.index.store import _write_index, load_index  # noqa: E402


def main(argv=None) -> int:
    from sweep import device_name, slug

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--work", type=Path, default=None, help="folder for the index (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=ROOT / "perf" / "results")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    words = np.array("alpha beta gamma delta river mountain castle duke city war peace music".split())
    passages = [Passage(f"p{i}", "", " ".join(words[rng.integers(0, len(words), 8)])) for i in range(args.count)]
    vectors = rng.standard_normal((args.count, args.dim), dtype=np.float32)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        path = Path(tmp) / "idx"
        start = time.perf_counter()
        lexical = BM25Index.build((p.text for p in passages), TokenizerConfig(stem=False))
        _write_index(path, vectors, passages, "synthetic", "ip", lexical)
        write_s = time.perf_counter() - start
        del vectors
        size = sum(f.stat().st_size for f in path.iterdir())
        timings = {}
        for name, verify in (("first_load_full_hash_s", True), ("verified_load_s", True),
                             ("verified_load_again_s", True), ("forced_full_hash_s", "full"),
                             ("no_verify_s", False)):
            start = time.perf_counter()
            index = load_index(path, verify=verify)
            timings[name] = round(time.perf_counter() - start, 3)
            assert index.manifest["count"] == args.count
            print(name, timings[name], flush=True)
    device = device_name()
    report = {"command": "python perf/index_load.py " + " ".join(argv or sys.argv[1:]), "device": device,
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "count": args.count, "dim": args.dim,
              "index_bytes": size, "write_s": round(write_s, 1), **timings,
              "note": "files were just written, so they sit in the page cache: the hash reads RAM, not disk"}
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{time.strftime('%Y-%m-%d')}_{slug(device)}_index_load.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
