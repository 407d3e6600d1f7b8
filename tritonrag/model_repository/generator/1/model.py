"""Triton glue for answer generation: question + passages (+ evidence, max_tokens, sampling) -> answer, finish_reason.

A light forwarder for `rag_ensemble` and plain infer calls: each row goes to the decode
engine that `generator_stream` owns, so the rows of every batch of this model join one
continuous batch with the streamed requests. Each row's prompt is rendered and tokenised
here, as the engine makes prompts (it tells how when the link connects), and travels as
token ids: the engine's process keeps its interpreter for decoding. (Triton 2.51 refuses
plain ModelInfer for a decoupled model and for an ensemble holding one, so this model is
not decoupled.)
`execute` checks the rows and returns at once (the link's render thread makes the batch's
prompts together and sends them) and answers later through each request's response sender
(allowed for non-decoupled models since Triton 24.06: exactly one response, flagged
final), so the instance never waits for the tokenizer or the engine. The rows travel over a
local socket rather than BLS: tritonrag/serving/engine_link.py says why.
"""

import faulthandler
import os
import queue
import sys
import threading

# The backend stub runs an isolated interpreter that ignores PYTHONPATH; take the
# paths the launcher exported (numpy, tritonrag) before importing them.
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

import triton_python_backend_utils as pb_utils

from tritonrag.common.params import model_param
from tritonrag.common.request_checks import (RequestError, check_range, check_sampling, decode_evidence,
                                             decode_passages, decode_question)
from tritonrag.serving.engine_link import EngineClient, Failed, find_engines
from tritonrag.serving.fanout import gather_rows
from tritonrag.serving.glue import (bytes_tensor, error_response, input_array, optional_rows, parse_config,
                                   read_limits, required_array)

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args):
        faulthandler.enable()   # a crash of this stub leaves its threads' Python stacks in the server's stderr
        config = parse_config(args)
        # the engine's error codes (pb_utils.TritonError exists only once the stub runs)
        self.codes = {"INVALID_ARG": pb_utils.TritonError.INVALID_ARG,
                      "UNAVAILABLE": pb_utils.TritonError.UNAVAILABLE, "INTERNAL": pb_utils.TritonError.INTERNAL}
        self.limits = read_limits(config)
        engine_model = model_param(config, "engine_model", "generator_stream")
        server = str(os.getppid())   # every stub of one server is a child of the tritonserver process
        self.engine = EngineClient(lambda: find_engines(server, engine_model))
        # connect and load the engine's tokenizer now, not on the first rows (the engine may
        # still be loading: it waits for it)
        threading.Thread(target=self.engine.warm_up, name="generator-warm-up", daemon=True).start()
        # responses leave from one thread, as in generator_stream's pump
        self.outbox = queue.Queue()
        threading.Thread(target=self._send_loop, name="generator-send", daemon=True).start()

    def execute(self, requests):
        rows, callbacks = [], []
        for request in requests:
            sender = request.get_response_sender()
            try:
                parsed = self._parse(request)   # copies the inputs: they are freed when execute returns
                texts = [row[1] for row in parsed]
                rows += parsed
                callbacks += gather_rows(len(parsed), lambda answers, sender=sender, texts=texts:
                                         self._respond(sender, answers, texts))
            except RequestError as exc:
                sender.send(error_response(str(exc)), flags=FINAL)
            except Exception as exc:  # noqa: BLE001 — this request only, not its batch-mates
                sender.send(error_response(f"internal error: {type(exc).__name__}: {exc}",
                                           pb_utils.TritonError.INTERNAL), flags=FINAL)
        if rows:   # rendered and sent by the link's thread, together: this instance takes the next batch
            self.engine.ask_many(rows, callbacks)
        return None

    def _parse(self, request):
        questions = required_array(request, "question").reshape(-1)
        if questions.size == 0:
            raise RequestError("the request holds no rows")
        passages = input_array(request, "passages")
        passages = passages.reshape(len(questions), -1) if passages is not None else [[]] * len(questions)
        evidence = optional_rows(request, "evidence", len(questions), lambda v: v)
        max_tokens = optional_rows(request, "max_tokens", len(questions))
        temperatures = optional_rows(request, "temperature", len(questions), float)
        top_ps = optional_rows(request, "top_p", len(questions), float)
        rows = []   # (question, passages, max_tokens, temperature, top_p, evidence): EngineClient's rows
        for q, row, m, temperature, top_p, quotes in zip(questions, passages, max_tokens, temperatures, top_ps,
                                                          evidence):
            rows.append((decode_question(q, self.limits.max_question_bytes),   # refused here, before the engine
                         decode_passages(row, self.limits.max_passages, self.limits.max_passages_bytes),
                         check_range("max_tokens", m, self.limits.default_max_tokens, self.limits.max_max_tokens),
                         *check_sampling(temperature, top_p),
                         decode_evidence(quotes, self.limits.max_passages_bytes)))
        return rows

    def _respond(self, sender, answers, passages) -> None:
        """Link thread: every row answered; queue the request's one response (with the passages
        it was given: rag_ensemble's output, which cannot be the retriever's, see its config)."""
        failed = next((a for a in answers if isinstance(a, Failed)), None)
        if failed is not None:
            response = error_response(failed.message, self.codes.get(failed.code, pb_utils.TritonError.INTERNAL))
        else:
            response = pb_utils.InferenceResponse([bytes_tensor("answer", [[a.answer] for a in answers]),
                                                   bytes_tensor("finish_reason", [[a.finish_reason] for a in answers]),
                                                   bytes_tensor("passages", passages)])
        self.outbox.put((sender, response))

    def _send_loop(self) -> None:
        while True:
            item = self.outbox.get()
            if item is None:
                return
            sender, response = item
            try:
                sender.send(response, flags=FINAL)
            except Exception as exc:  # noqa: BLE001 — the client is gone; nothing else to tell
                pb_utils.Logger.log_warn(f"generator: response not sent: {exc}")

    def finalize(self):
        self.outbox.put(None)
        self.engine.close()
