"""Answer generation on the package's decode engine, with continuous batching.

The model loads through transformers (`builtin:`, a folder, a Hub id, or ``dummy:``
random weights); `tritonrag.generation.engine` runs the decode with a static KV cache and
iteration-level batching in one background thread. `submit` hands one request to
that thread and returns at once (streaming and decoupled serving use it);
`generate` submits a list and waits, so requests from concurrent callers share the
running batch and each finishes at its own `max_tokens` or end token.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Callable, Sequence

from tritonrag.common.request_checks import Limits, RequestError, check_sampling
from tritonrag.models import sources as model_sources

from .engine import ContinuousBatcher, DecodeEngine
from .engine import Sequence as EngineSequence
from .engine.scheduler import SequenceError
from .engine.spans import SpanConstraint
from .engine.text import IncrementalText
from .prompting import SYSTEM_PROMPT, Prompter, PromptTooLongError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = field(default_factory=tuple)
    quotes: tuple[tuple[int, ...], ...] = ()   # the answer copies one of these from its first token on


@dataclass
class EngineSettings:
    """Sizes of the decode engine (config.pbtxt parameters of the generator)."""
    max_running: int = 8            # KV-cache slots: sequences decoded at once
    # the most new tokens a request may ask: the config's `max_max_tokens` (the request limit of
    # `tritonrag.common.request_checks.Limits`), so one KV slot holds max_prompt_tokens + max_new_tokens positions
    max_new_tokens: int = Limits.max_max_tokens
    max_tokens_in_flight: int = 0   # reserved prompt + max_tokens over the running batch (0: no bound)
    prefill_tokens: int = 8192      # prompt tokens prefilled between two decode steps
    prefill_wait_ms: float = 0.0    # how long an arrival may wait for others to share its prefill
    prefill_graphs: int = 0         # prefills of up to this many prompts replay a captured CUDA graph (0: none)
    cuda_graphs: bool = True
    torch_compile: bool = False     # fuse each layer's small ops with torch.compile before capture (GPU)
    attention: str = "auto"         # decode step: "triton" kernels on CUDA (auto), "sdpa" (the CPU's)
    overlap_steps: bool = True      # CUDA: launch step n+1 before reading step n's ids (greedy batches)
    gemm: str = "cublas"            # decode-step matmuls: cublas, triton (skinny_gemm) or auto (faster per batch)
    ignore_eos: bool = False        # every answer runs to its max_tokens (capacity benchmarks)
    max_waiting: int = 0            # requests waiting for a slot before new ones are refused (0: max_running)
    cpu_dtype: str = "auto"         # CPU weights: bfloat16 where the CPU has bf16 dot products (auto), float32

    @classmethod
    def from_config(cls, config: dict, device: str) -> "EngineSettings":
        """From a model's `config.pbtxt` parameters; max_running 0 means 8 on a CPU, 256 on a GPU,
        max_waiting 0 as many as max_running (a second batch's worth)."""
        from tritonrag.common.params import model_param

        defaults = cls()
        values = {name: model_param(config, name, getattr(defaults, name)) for name in defaults.__dataclass_fields__
                  if name != "max_new_tokens"}
        values["max_new_tokens"] = model_param(config, "max_max_tokens", defaults.max_new_tokens)  # the slot size
        if values["max_running"] <= 0:
            values["max_running"] = 256 if device.startswith("cuda") else 8
        if values["max_waiting"] <= 0:
            values["max_waiting"] = values["max_running"]
        return cls(**values)


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU multiplies bf16 natively (x86 AVX512-BF16 or AMX-BF16, Arm BF16); elsewhere
    torch emulates bf16 matmuls, slower than float32. Linux's /proc/cpuinfo flags; False if unreadable."""
    if cpuinfo is None:
        try:
            cpuinfo = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def cpu_dtype(setting: str, cpuinfo: str | None = None) -> str:
    """The generator's CPU dtype for the `cpu_dtype` parameter: "auto" is bfloat16 on a CPU with
    native bf16 dot products (about twice as fast, the same answers:
    docs/decisions/0054-decode-engine-kernels.md), float32 elsewhere."""
    if setting not in ("auto", "bfloat16", "float32"):
        raise ValueError(f"cpu_dtype must be auto, bfloat16 or float32, not {setting!r}")
    if setting == "auto":
        return "bfloat16" if cpu_has_native_bf16(cpuinfo) else "float32"
    return setting


class Generator:
    def __init__(self, model: str, device: str = "cpu", max_prompt_tokens: int = 1024,
                 system_prompt: str = SYSTEM_PROMPT, settings: EngineSettings | None = None,
                 prompt_passages: int = 0, answer_mode: str = "generate"):
        import torch

        self.settings = settings = settings or EngineSettings()
        self.model_id = model_sources.model_name(model)
        self.device = torch.device(device)
        # how prompts are made, here and (sent over the engine link) in the `generator` forwarder
        self.prompter = Prompter.load(model_sources.tokenizer_source(model, causal=True), max_prompt_tokens,
                                      system_prompt, prompt_passages, answer_mode)
        self.tokenizer = self.prompter.tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        on_cpu = getattr(torch, cpu_dtype(settings.cpu_dtype))     # checked on any device
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else on_cpu
        hf_model = model_sources.load_model(model, self.device, self.dtype, causal=True)
        self.eos_ids = _eos_ids(hf_model, self.tokenizer)
        self.engine = DecodeEngine.from_hf(hf_model, slots=settings.max_running,
                                           max_len=max_prompt_tokens + settings.max_new_tokens,
                                           cuda_graphs=settings.cuda_graphs, compile=settings.torch_compile,
                                           attention=settings.attention, gemm=settings.gemm,
                                           prefill_graph_prompts=settings.prefill_graphs,
                                           prefill_graph_width=max_prompt_tokens)
        if self.engine.warmup_s:
            log.info("generator: CUDA graphs captured in %.1f s", self.engine.warmup_s)
        self.batcher = ContinuousBatcher(self.engine, max_tokens_in_flight=settings.max_tokens_in_flight or None,
                                         prefill_tokens=settings.prefill_tokens,
                                         prefill_wait_ms=settings.prefill_wait_ms,
                                         overlap=settings.overlap_steps and self.device.type == "cuda")
        self.batcher.start()

    def close(self) -> None:
        """Stop the engine thread (pending requests end as cancelled)."""
        self.batcher.stop()

    def prepare(self, question: str, passages: Sequence[str], max_tokens: int, temperature: float = 0.0,
                top_p: float = 1.0, stop: Sequence[str] = (), evidence: str = "") -> GenerationRequest:
        """Tokenise one request's prompt (`Prompter.render`: raises PromptTooLongError if it cannot fit).
        `evidence`: the passages' sentence that best answers the question (the reranker's): what
        the answer quotes with answer_mode "quote" (`Prompter.quote_spans`)."""
        return self.request(self.prompter.render(question, passages), max_tokens, temperature, top_p, stop,
                            self.prompter.quote_spans(evidence))

    def request(self, prompt_ids: Sequence[int], max_tokens: int, temperature: float = 0.0,
                top_p: float = 1.0, stop: Sequence[str] = (), quotes: Sequence[Sequence[int]] = ()) -> GenerationRequest:
        """A request from prompt ids made elsewhere (the `generator` forwarder's) or by `prepare`."""
        prompt_ids = list(prompt_ids)
        if len(prompt_ids) > self.max_prompt_tokens:
            raise PromptTooLongError(f"the prompt is {len(prompt_ids)} tokens; the limit is {self.max_prompt_tokens}")
        temperature, top_p = check_sampling(temperature, top_p)
        if max_tokens > self.settings.max_new_tokens:
            raise RequestError(f"max_tokens must be at most {self.settings.max_new_tokens}, got {max_tokens}")
        return GenerationRequest(prompt_ids, max_tokens, float(temperature), float(top_p), tuple(stop),
                                 tuple(tuple(int(t) for t in q) for q in quotes if len(q)))

    def submit(self, request: GenerationRequest,
               on_text: Callable[[str, bool, EngineSequence], None] | None = None,
               stream: bool = True, bounded: bool = True) -> EngineSequence:
        """Start one request; `on_text(piece, finished, seq)` is called from the engine thread
        with each new piece of answer text (the last call has finished=True). With
        `stream` false and no stop strings it is called once, at the end, with no piece
        (read the answer with `answer(seq)`): no text is decoded per token. `bounded`: refuse
        it (OverloadedError) when `max_waiting` requests already wait."""
        text = IncrementalText(self.tokenizer, request.stop, self.eos_ids)
        pieces = stream or bool(text.stop)

        def on_token(seq: EngineSequence, token: int | None, finished: bool) -> None:
            if not pieces:
                if token is not None:
                    text.append(token)
                if finished and on_text is not None:
                    on_text("", True, seq)
                return
            piece = text.push(token, final=finished)
            if text.stopped and not finished:
                seq.cancel("stop")   # the engine ends it before its next step
            if on_text is not None and (piece or finished):
                on_text(piece, finished, seq)

        seq = EngineSequence(request.prompt_ids, request.max_tokens, request.temperature, request.top_p,
                             stop_ids=frozenset() if self.settings.ignore_eos else frozenset(self.eos_ids),
                             on_token=on_token)
        seq.text = text
        if request.quotes and seq.stop_ids:   # a quote needs an end token to stop at (ignore_eos has none)
            seq.constraint = SpanConstraint(request.quotes, seq.stop_ids, anchored=True)
        limit = self.settings.max_waiting or self.settings.max_running
        if bounded and len(self.batcher.waiting) >= limit:
            # worded as Triton's own full-queue rejection, which clients and load tests look for
            raise OverloadedError(f"Exceeds maximum queue size: {limit} requests already "
                                  "wait for the generator's engine")
        try:
            return self.batcher.submit(seq)
        except SequenceError as exc:
            raise RequestError(str(exc)) from exc

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        """Answers, one per request, in order (greedy unless a request asks for sampling)."""
        seqs = [self.submit(r, stream=False, bounded=False) for r in requests]   # the caller waits for all
        for seq in seqs:
            seq.done.wait()
        for seq in seqs:
            if seq.finish_reason == "error":
                raise RuntimeError(f"generation failed: {seq.error}")
        return [self.answer(seq) for seq in seqs]

    @staticmethod
    def answer(seq: EngineSequence) -> str:
        """The whole answer of a finished sequence, cut before any stop string."""
        full = seq.text.text()
        cut = min((full.find(s) for s in seq.text.stop if s in full), default=len(full))
        return full[:cut].strip()


class OverloadedError(RequestError):
    """Too many requests wait for a slot; the client should retry later."""


def _eos_ids(model, tokenizer) -> list[int]:
    """End-of-turn ids from the generation config, plus the tokenizer's EOS."""
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)
