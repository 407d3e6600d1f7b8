"""The Generator end to end on a GPU with dummy Qwen2.5-1.5B weights (no Hub needed).

Loads `dummy:qwen2.5-1.5b-instruct` (the builtin SmolLM2 tokenizer: copy its folder
without weights into $TRITONRAG_CACHE_DIR/models/SmolLM2-135M-Instruct on a host
without the package), logs the CUDA-graph warm-up, answers 64 RAG prompts with forced
128-token outputs through the continuous batcher, and prints one JSON line.
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(torch_compile: bool) -> None:
    from tritonrag.generation.generator import EngineSettings, Generator
    from tritonrag.index.synthetic import make_facts

    start = time.perf_counter()
    generator = Generator("dummy:qwen2.5-1.5b-instruct", "cuda:0",
                          settings=EngineSettings(max_running=64, max_new_tokens=512, ignore_eos=True,
                                                  torch_compile=torch_compile))
    load_s = time.perf_counter() - start
    facts = make_facts(64, seed=3)
    requests = [generator.prepare(f.question, [g.passage for g in facts[i:i + 3]], 128) for i, f in enumerate(facts)]
    generator.generate(requests[:8])   # warm-up
    start = time.perf_counter()
    answers = generator.generate(requests)
    seconds = time.perf_counter() - start
    generator.close()
    print(json.dumps({"torch_compile": torch_compile, "load_s": round(load_s, 2), "graph_capture_s": round(generator.engine.warmup_s, 2),
                      "graphs": len(generator.engine._graphs), "requests": len(requests),
                      "prompt_tokens_mean": sum(len(r.prompt_ids) for r in requests) / len(requests),
                      "seconds": round(seconds, 3), "requests_per_s": round(len(requests) / seconds, 1),
                      "nonempty_answers": sum(bool(a) for a in answers)}))


if __name__ == "__main__":
    main("--compile" in sys.argv)
