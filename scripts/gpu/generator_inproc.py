"""Probe: the Generator (tokenizer + engine) in process, closed loop, prompts rendered per request
in the client threads (as the engine link does) or rendered once up front (--prerender)."""
import argparse, json, threading, time, sys
sys.path.insert(0, ".")
from tritonrag.generation.generator import Generator, EngineSettings

p = argparse.ArgumentParser()
p.add_argument("--model", default="dummy:qwen2.5-1.5b-instruct")
p.add_argument("--concurrency", type=int, default=128)
p.add_argument("--requests", type=int, default=512)
p.add_argument("--max-tokens", type=int, default=128)
p.add_argument("--prerender", action="store_true")
p.add_argument("--slots", type=int, default=256)
args = p.parse_args()
gen = Generator(args.model, device="cuda", settings=EngineSettings(max_running=args.slots, ignore_eos=True))
passages = ["Title %d\n" % i + "The quick brown fox jumps over the lazy dog. " * 8 for i in range(3)]
fixed = gen.prepare("What does passage 0 say about the topic?", passages, args.max_tokens)
print("prompt tokens", len(fixed.prompt_ids), flush=True)
def run(n_req):
    lock = threading.Lock(); left = [n_req]; lat = []
    def client(c):
        while True:
            with lock:
                if left[0] <= 0: return
                left[0] -= 1; i = left[0]
            t = time.perf_counter()
            req = fixed if args.prerender else gen.prepare(f"What does passage {i} say about the topic?", passages, args.max_tokens)
            done = threading.Event()
            gen.submit(req, lambda piece, fin, seq: fin and done.set(), stream=False, bounded=False)
            done.wait()
            lat.append(time.perf_counter() - t)
    t0 = time.perf_counter()
    th = [threading.Thread(target=client, args=(c,)) for c in range(args.concurrency)]
    [x.start() for x in th]; [x.join() for x in th]
    return n_req / (time.perf_counter() - t0), sorted(lat)[len(lat) // 2]
run(args.concurrency)
rps, p50 = run(args.requests)
print(json.dumps({"prerender": args.prerender, "concurrency": args.concurrency, "req_s": round(rps, 1), "p50_s": round(p50, 3),
                  "steps": gen.batcher.steps}), flush=True)
gen.close()
