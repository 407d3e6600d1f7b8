"""The generator forwarder's link to the engine and the decoupled models' response pump, in process."""

import threading
import time

import pytest

import shutil
import tempfile

from tritonrag.serving.engine_link import Done, EngineClient, EngineServer, Failed, engine_address, find_engines
from tritonrag.serving.fanout import gather_rows
from tritonrag.serving.response_pump import ResponsePump

FINAL = 1


def test_gather_rows_answers_once_with_rows_in_order():
    answers = []
    callbacks = gather_rows(3, answers.append)
    threads = [threading.Thread(target=callbacks[i], args=(f"row {i}",)) for i in (2, 0, 1)]
    for t in threads:
        t.start()
        t.join()
    assert answers == [["row 0", "row 1", "row 2"]]
    with pytest.raises(ValueError):
        gather_rows(0, answers.append)


def _start_engine(address, delay_s=0.0, cancelled=None):
    """An EngineServer whose 'engine' upper-cases the question on a thread of its own."""
    def start(ask, reply, handle):
        _, rid, question, passages, max_tokens, temperature, top_p = ask
        if not question:
            reply(Failed(rid, "INVALID_ARG", "question is empty"))
            return
        stop = threading.Event()
        handle.append(stop)

        def work():
            if stop.wait(delay_s):
                return                      # cancelled: the forwarder is gone
            reply(Done(rid, f"{question.upper()}|{len(passages)}|{max_tokens}|{temperature}|{top_p}", "stop"))

        threading.Thread(target=work, daemon=True).start()

    def cancel(handle):
        handle[0].set()
        if cancelled is not None:
            cancelled.append(handle)

    return EngineServer(address, start, cancel=cancel)


def _wait(predicate, timeout=5):
    deadline = time.time() + timeout
    while not predicate() and time.time() < deadline:
        time.sleep(0.01)
    assert predicate()


@pytest.fixture
def short_tmp(monkeypatch):
    """A temp folder short enough for a Unix socket path (108 bytes at most)."""
    path = tempfile.mkdtemp(prefix="tl", dir="/tmp")
    monkeypatch.setattr(tempfile, "tempdir", path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_engine_link_answers_rows_and_errors_by_id(short_tmp):
    server = _start_engine(engine_address("42", "generator_stream_0_0"), delay_s=0.01)
    assert find_engines("42", "generator_stream") == [server.address]
    assert find_engines("43", "generator_stream") == []
    client, got = EngineClient(lambda: find_engines("42", "generator_stream")), {}
    for i in range(50):
        client.ask(f"q{i}" if i != 7 else "", ["p"] * (i % 3), 32, lambda m, i=i: got.__setitem__(i, m))
    _wait(lambda: len(got) == 50)
    assert got[7][0] == "error" and got[7][2:] == ("INVALID_ARG", "question is empty")
    assert all(got[i] == ("done", got[i][1], f"Q{i}|{i % 3}|32|0.0|1.0", "stop") for i in range(50) if i != 7)
    assert len({m[1] for m in got.values()}) == 50          # one id per row
    client.ask("t", [], 8, lambda m: got.__setitem__("sampled", m), 0.5, 0.25)   # sampling travels with the row
    _wait(lambda: "sampled" in got)
    assert got["sampled"][2:] == ("T|0|8|0.5|0.25", "stop")
    client.close()
    server.close()


def test_engine_link_fails_rows_at_once_when_the_engine_is_gone(short_tmp):
    client, got = EngineClient(lambda: find_engines("7", "generator_stream")), []
    client.ask("q", [], 8, got.append)                        # no engine yet
    assert got[0][0] == "error" and got[0][2] == "UNAVAILABLE"
    server = _start_engine(engine_address("7", "generator_stream_0_0"), delay_s=30)
    client.ask("slow", [], 8, got.append)
    time.sleep(0.2)
    server.close()                                            # the engine's model unloads: its rows fail now
    _wait(lambda: len(got) == 2)
    assert got[1][0] == "error" and got[1][2] == "UNAVAILABLE"
    server = _start_engine(engine_address("7", "generator_stream_0_0"), delay_s=0)
    client.ask("back", [], 8, got.append)                     # a new engine is dialled on the next row
    _wait(lambda: len(got) == 3)
    assert got[2][0] == "done" and got[2][2].startswith("BACK")
    client.close()
    server.close()


def test_engine_cancels_the_rows_of_a_forwarder_that_went_away(short_tmp):
    cancelled = []
    server = _start_engine(engine_address("8", "generator_stream_0_0"), delay_s=30, cancelled=cancelled)
    client = EngineClient(lambda: find_engines("8", "generator_stream"))
    client.ask("slow", [], 8, lambda m: None)
    client.ask("slow too", [], 8, lambda m: None)
    time.sleep(0.2)
    client.close()
    _wait(lambda: len(cancelled) == 2)
    server.close()


class FakeSender:
    """Records what a Triton response sender would send."""

    def __init__(self, cancelled=False):
        self.sent, self.cancelled = [], cancelled

    def send(self, response=None, flags=0):
        self.sent.append((response, flags))

    def is_cancelled(self):
        return self.cancelled


def _wait_final(sender, timeout=5):
    deadline = time.time() + timeout
    while not (sender.sent and sender.sent[-1][1] == FINAL) and time.time() < deadline:
        time.sleep(0.01)
    assert sender.sent and sender.sent[-1][1] == FINAL


def test_pump_merges_queued_pieces_of_one_request_and_keeps_order():
    pump = ResponsePump(on_cancel=lambda h: None, text_response=lambda text: ("answer", text), final_flag=FINAL)
    gate = threading.Event()
    blocker = FakeSender()
    blocker.send = lambda response=None, flags=0: gate.wait(5)   # holds the pump while pieces queue up
    a, b = FakeSender(), FakeSender()
    for sender in (blocker, a, b):
        pump.track(sender, [])
    pump.send_text(blocker, [], "x", False)
    time.sleep(0.1)
    for piece in ("The", " cat", " sat"):
        pump.send_text(a, [], piece, False)
        pump.send_text(b, [], piece.upper(), False)
    pump.send_text(a, [], ".", True)
    gate.set()
    _wait_final(a)
    pump.send_text(b, [], "", True)
    _wait_final(b)
    assert a.sent == [(("answer", "The cat sat."), FINAL)]          # four pieces, one response
    texts = [r[1] for r, _ in b.sent if r is not None]
    assert "".join(texts) == "THE CAT SAT" and b.sent[-1] == (None, FINAL)
    pump.stop()


def test_pump_sends_each_piece_when_it_keeps_up():
    pump = ResponsePump(on_cancel=lambda h: None, text_response=lambda text: text, final_flag=FINAL)
    sender = FakeSender()
    pump.track(sender, [])
    for piece in ("a", "b", "c"):
        pump.send_text(sender, [], piece, False)
        time.sleep(0.05)
    pump.send_text(sender, [], "d", True)
    _wait_final(sender)
    assert sender.sent == [("a", 0), ("b", 0), ("c", 0), ("d", FINAL)]
    pump.stop()


def test_pump_cancels_and_drops_later_pieces():
    cancelled = []
    pump = ResponsePump(on_cancel=cancelled.append, poll_s=0.02, text_response=lambda text: text, final_flag=FINAL)
    sender = FakeSender(cancelled=True)
    pump.track(sender, ["handle"])
    _wait_final(sender)
    pump.send_text(sender, ["handle"], "late", True)
    time.sleep(0.1)
    assert cancelled == [["handle"]] and sender.sent == [(None, FINAL)]
    pump.stop()
