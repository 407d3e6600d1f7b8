"""Check that the unchanged repository serves on a GPU host with CUDA instances.

Runs on a machine without Hub access: it builds models of the builtin
architectures with random weights (their real configs and tokenizers, shipped in a
folder made by `--pack`), starts the server through the launcher, asks questions over
gRPC, and reports the instance kinds Triton chose and the latencies. Answers are
nonsense with random weights; this checks placement and plumbing, not quality.

  python scripts/gpu_smoke.py --pack DIR          # here: copy configs + tokenizers
  python scripts/gpu_smoke.py --from-pack DIR --out OUT   # on the GPU host
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SKIP = (".safetensors", ".bin", ".gguf", ".md", ".gitattributes")


def pack(target: Path) -> None:
    from tritonrag.models import sources as model_sources

    for spec, name in ((model_sources.DEFAULT_EMBEDDER, "embedder"), (model_sources.DEFAULT_GENERATOR, "generator")):
        source = Path(model_sources.resolve(spec))
        (target / name).mkdir(parents=True, exist_ok=True)
        # and as a converted builtin model without weights under cache/models/, where
        # `dummy:` specs find the tokenizer they borrow (TRITONRAG_CACHE_DIR=<pack>/cache)
        cached = target / "cache" / "models" / model_sources.model_name(spec)
        cached.mkdir(parents=True, exist_ok=True)
        for f in source.iterdir():
            if f.is_file() and not f.name.endswith(SKIP):
                shutil.copy(f, target / name / f.name)
                shutil.copy(f, cached / f.name)
    print(f"packed into {target}")


def random_models(pack_dir: Path, work: Path) -> dict[str, str]:
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    out = {}
    for name, cls in (("embedder", AutoModel), ("generator", AutoModelForCausalLM)):
        config = AutoConfig.from_pretrained(pack_dir / name)
        model = cls.from_config(config)
        model.save_pretrained(work / name)
        AutoTokenizer.from_pretrained(pack_dir / name).save_pretrained(work / name)
        out[name] = str(work / name)
    return out


def in_process_check(models: dict[str, str]) -> dict:
    """The package's CUDA paths (fp16 encoder, CuPy search, bf16 generator) against the CPU."""
    import numpy as np

    from tritonrag.generation.generator import Generator
    from tritonrag.index.corpus import pydoc_passages
    from tritonrag.models.embedding import Embedder
    from tritonrag.retrieval.search.exact import ExactSearch

    texts = [p.embedding_text() for p in pydoc_passages()[:256]]
    on_cpu = Embedder(models["embedder"], "cpu").embed_passages(texts)
    t = time.perf_counter()
    on_gpu = Embedder(models["embedder"], "cuda:0").embed_passages(texts)
    embed_s = time.perf_counter() - t
    cpu_top, _ = ExactSearch(on_cpu, "ip", "cpu").search(on_cpu[:32], 10)
    gpu_search = ExactSearch(on_cpu, "ip", "cuda:0")
    gpu_top, _ = gpu_search.search(on_cpu[:32], 10)
    generator = Generator(models["generator"], "cuda:0")
    t = time.perf_counter()
    answers = generator.generate([generator.prepare(f"question {i}?", texts[i:i + 3], 16) for i in range(8)])
    return {
        "embedding_min_cosine_gpu_fp16_vs_cpu_fp32": round(float((on_cpu * on_gpu).sum(axis=1).min()), 5),
        "embed_256_passages_gpu_s": round(embed_s, 3),
        "search_backend": type(gpu_search.corpus).__module__,
        "search_top10_same_as_cpu": float(np.mean(cpu_top == gpu_top)),
        "generator_device": str(next(generator.model.parameters()).device),
        "generator_dtype": str(next(generator.model.parameters()).dtype),
        "generate_8x16_tokens_s": round(time.perf_counter() - t, 3),
        "answers_nonempty": sum(bool(a) for a in answers),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pack", type=Path)
    parser.add_argument("--from-pack", type=Path)
    parser.add_argument("--out", type=Path, default=Path("gpu-smoke"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-smoke"))
    parser.add_argument("--in-process", action="store_true", help="check the package's CUDA paths, no server")
    args = parser.parse_args()
    if args.pack:
        pack(args.pack)
        return 0

    import os

    os.environ.setdefault("TRITONRAG_CACHE_DIR", str(args.work / "cache"))
    import numpy as np
    import tritonclient.grpc as grpcclient
    import tritonclient.grpc.aio as aiogrpc
    from tritonrag.server.launcher import ServerSettings, TritonServer

    args.out.mkdir(parents=True, exist_ok=True)
    models = random_models(args.from_pack, args.work / "models")
    if args.in_process:
        report = in_process_check(models)
        (args.out / "gpu_in_process.json").write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))
        return 0
    settings = ServerSettings(http_port=8100, grpc_port=8101, metrics_port=8102,
                              embedder=models["embedder"], generator=models["generator"])
    report: dict = {"date": time.strftime("%Y-%m-%d"), "weights": "random (builtin architectures)"}
    started = time.perf_counter()
    server = TritonServer(settings, run_dir=args.work / "run")
    try:
        server.start()
        report["ready_s"] = round(time.perf_counter() - started, 2)
        log = server.log_path.read_text(errors="replace")
        pattern = r"TRITONBACKEND_ModelInstanceInitialize: (\S+) \((\w+) device (\d+)\)"
        report["instances"] = sorted(set(re.findall(pattern, log)))

        def inputs(module, question):
            q = module.InferInput("question", [1, 1], "BYTES")
            q.set_data_from_numpy(np.array([[question.encode()]], dtype=np.object_))
            m = module.InferInput("max_tokens", [1, 1], "INT32")
            m.set_data_from_numpy(np.array([[16]], dtype=np.int32))
            return [q, m]

        client = grpcclient.InferenceServerClient(server.grpc_url)
        t = time.perf_counter()
        result = client.infer("rag_ensemble", inputs(grpcclient, "What does the with statement do?"))
        report["first_answer_s"] = round(time.perf_counter() - t, 3)
        report["sources"] = [s.decode() for s in result.as_numpy("sources")[0]]

        async def burst(n):
            async with aiogrpc.InferenceServerClient(server.grpc_url) as aclient:
                t = time.perf_counter()
                await asyncio.gather(*(aclient.infer("rag_ensemble", inputs(aiogrpc, f"question {i} about with"))
                                       for i in range(n)))
                return time.perf_counter() - t

        report["burst_32_s"] = round(asyncio.run(burst(32)), 3)
        stats = client.get_inference_statistics(as_json=True)
        report["stats"] = {m["name"]: {"inferences": m.get("inference_count"), "executions": m.get("execution_count")}
                           for m in stats["model_stats"]}
    finally:
        server.stop()
        shutil.copy(server.log_path, args.out / "tritonserver.log")
    (args.out / "gpu_smoke.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0 if all(kind == "GPU" for _, kind, _ in report.get("instances", [])) else 1


if __name__ == "__main__":
    sys.exit(main())
