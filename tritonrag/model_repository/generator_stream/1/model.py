"""Triton glue for the decode engine: one request -> streamed answer pieces (decoupled)."""

import os
import sys

# The backend stub runs an isolated interpreter that ignores PYTHONPATH; take the
# paths the launcher exported (numpy, torch, tritonrag) before importing them.
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

import numpy as np
import triton_python_backend_utils as pb_utils

from tritonrag.common.params import model_param
from tritonrag.common.request_checks import (RequestError, check_range, decode_evidence, decode_passages,
                                             decode_question)
from tritonrag.generation.generator import EngineSettings, Generator, OverloadedError
from tritonrag.models.sources import DEFAULT_GENERATOR
from tritonrag.serving.engine_link import Done, EngineServer, Failed, PromptRecipe, engine_address
from tritonrag.serving.glue import (error_response, input_array, instance_device, optional_rows, parse_config,
                                   read_limits, required_array)
from tritonrag.serving.response_pump import ResponsePump


class TritonPythonModel:
    def initialize(self, args):
        config = parse_config(args)
        self.limits = read_limits(config)
        self.max_stop = model_param(config, "max_stop_strings", 8)
        device = instance_device(args)
        self.generator = Generator(model_param(config, "generator_model", DEFAULT_GENERATOR), device=device,
                                   max_prompt_tokens=model_param(config, "max_prompt_tokens", 1024),
                                   prompt_passages=model_param(config, "prompt_passages", 0),
                                   answer_mode=model_param(config, "answer_mode", "quote"),
                                   settings=EngineSettings.from_config(config, device))
        pb_utils.Logger.log_info(f"generator_stream: engine on {device} ({self.generator.dtype}), {self.generator.settings}, "
                                 f"CUDA graphs captured in {self.generator.engine.warmup_s:.1f} s")
        # the family must outlive its metrics: keep it on the model
        self.metric_family = pb_utils.MetricFamily("tritonrag_generator_sequences", "sequences in the decode engine",
                                                   pb_utils.MetricFamily.GAUGE)
        self.running_metric = self.metric_family.Metric(labels={"state": "running"})
        self.waiting_metric = self.metric_family.Metric(labels={"state": "waiting"})
        # handles are one-element lists holding the engine's sequence (filled once it is submitted)
        self.pump = ResponsePump(on_cancel=lambda handle: handle and handle[0].cancel(),
                                 on_idle=self._update_metrics, text_response=_answer,
                                 final_flag=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        # the `generator` forwarder's rows (rag_ensemble) arrive on a local socket, not by BLS
        # (tritonrag/serving/engine_link.py says why), as prompt token ids made by this generator's
        # recipe; the parent pid names this server's sockets
        self.link = EngineServer(engine_address(str(os.getppid()), args["model_instance_name"]),
                                 PromptRecipe.of(self.generator.prompter), self._answer_row,
                                 cancel=lambda handle: handle and handle[0].cancel())

    def _update_metrics(self):
        self.running_metric.set(len(self.generator.batcher.running))
        self.waiting_metric.set(len(self.generator.batcher.waiting))

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                stream, generation = self._parse(request)
                self._start(sender, generation, stream)
            except RequestError as exc:
                sender.send(error_response(str(exc)), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except Exception as exc:  # noqa: BLE001 — this request only
                sender.send(error_response(f"internal error: {type(exc).__name__}: {exc}",
                                           pb_utils.TritonError.INTERNAL),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None

    def _parse(self, request):
        questions = required_array(request, "question").reshape(-1)
        if questions.size != 1:
            raise RequestError(f"generator_stream takes one question per request, got {questions.size}")
        passages = input_array(request, "passages")
        passages = [] if passages is None else decode_passages(passages.reshape(-1), self.limits.max_passages,
                                                                 self.limits.max_passages_bytes)
        evidence = decode_evidence(optional_rows(request, "evidence", 1, lambda v: v)[0],
                                   self.limits.max_passages_bytes)
        stop = input_array(request, "stop")
        stop = [] if stop is None else [s.decode("utf-8", "replace") for s in stop.reshape(-1)]
        if len(stop) > self.max_stop:
            raise RequestError(f"at most {self.max_stop} stop strings, got {len(stop)}")
        max_tokens = _scalar(request, "max_tokens", None)
        stream = bool(_scalar(request, "stream", True))
        generation = self.generator.prepare(
            decode_question(questions[0], self.limits.max_question_bytes), passages,
            check_range("max_tokens", max_tokens, self.limits.default_max_tokens, self.limits.max_max_tokens),
            temperature=float(_scalar(request, "temperature", 0.0)), top_p=float(_scalar(request, "top_p", 1.0)),
            stop=stop, evidence=evidence)
        return stream, generation

    def _start(self, sender, generation, stream: bool):
        pump, handle = self.pump, []

        def on_text(piece, finished, seq):   # engine thread: enqueue only
            if seq.finish_reason == "error":
                pump.send(sender, handle, error_response(f"internal error: {seq.error}",
                                                         pb_utils.TritonError.INTERNAL), True)
            elif seq.finish_reason == "cancelled":
                pump.send(sender, handle, None, True)
            elif stream and not finished:
                pump.send_text(sender, handle, piece, False)
            elif stream:   # the last piece carries the finish reason
                pump.send(sender, handle, _answer(piece, seq.finish_reason), True)
            else:
                pump.send(sender, handle, _answer(self.generator.answer(seq), seq.finish_reason), True)

        pump.track(sender, handle)   # before submitting: the pump must know it when the first piece comes
        try:
            handle.append(self.generator.submit(generation, on_text, stream=stream))
        except OverloadedError as exc:
            pump.send(sender, handle, error_response(str(exc), pb_utils.TritonError.UNAVAILABLE), True)
        except RequestError as exc:
            pump.send(sender, handle, error_response(str(exc)), True)

    def _answer_row(self, ask, reply, handle):
        """One forwarded row, its prompt already tokenised, answered whole (link thread; the
        engine thread replies)."""
        rid = ask.rid
        try:
            # checked by the forwarder against its own limits; these are this model's
            generation = self.generator.request(
                ask.prompt_ids, check_range("max_tokens", ask.max_tokens, self.limits.default_max_tokens,
                                            self.limits.max_max_tokens),
                temperature=ask.temperature, top_p=ask.top_p, quotes=ask.quotes)
        except RequestError as exc:
            reply(Failed(rid, "INVALID_ARG", str(exc)))
            return

        def on_text(piece, finished, seq):
            if not finished:
                return
            if seq.finish_reason == "error":
                reply(Failed(rid, "INTERNAL", f"internal error: {seq.error}"))
            elif seq.finish_reason == "cancelled":
                reply(Failed(rid, "UNAVAILABLE", "cancelled"))
            else:
                reply(Done(rid, self.generator.answer(seq), seq.finish_reason))

        try:
            handle.append(self.generator.submit(generation, on_text, stream=False))
        except OverloadedError as exc:
            reply(Failed(rid, "UNAVAILABLE", str(exc)))
        except RequestError as exc:
            reply(Failed(rid, "INVALID_ARG", str(exc)))

    def finalize(self):
        self.link.close()
        self.generator.close()
        self.pump.stop()


def _scalar(request, name, default):
    array = input_array(request, name)
    if array is None:
        return default
    if array.size != 1:
        raise RequestError(f"{name} must hold one value, got shape {list(array.shape)}")
    value = array.reshape(-1)[0]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        raise RequestError(f"{name} must be finite")
    return value


def _answer(text: str, finish_reason: str | None = None):
    """A response with a piece of answer text (and, on the last one, the finish reason)."""
    tensors = [pb_utils.Tensor("answer", np.array([text.encode("utf-8")], dtype=np.object_))]
    if finish_reason is not None:
        tensors.append(pb_utils.Tensor("finish_reason", np.array([finish_reason.encode()], dtype=np.object_)))
    return pb_utils.InferenceResponse(tensors)
