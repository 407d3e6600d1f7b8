"""The generator forwarder's thread fan-out and the decoupled models' response pump, in process."""

import threading
import time

import pytest

from tritonrag.fanout import RowFanout
from tritonrag.response_pump import ResponsePump

FINAL = 1


def test_fanout_answers_once_with_rows_in_order():
    fanout, answers, finished = RowFanout(8), [], threading.Event()

    def call(row):
        time.sleep(0.01 * (5 - row))     # later rows finish first
        return row * 10

    fanout.submit([0, 1, 2, 3, 4], call, lambda result: (answers.append(result), finished.set()))
    assert finished.wait(5)
    time.sleep(0.05)
    assert answers == [[0, 10, 20, 30, 40]]
    fanout.close()


def test_fanout_reports_the_error_after_all_rows_ran():
    fanout, ran, answers, finished = RowFanout(4), [], [], threading.Event()

    def call(row):
        ran.append(row)
        if row == 1:
            raise ValueError("row 1 is bad")
        time.sleep(0.05)
        return row

    fanout.submit([0, 1, 2], call, lambda result: (answers.append(result), finished.set()))
    assert finished.wait(5)
    assert sorted(ran) == [0, 1, 2]
    assert len(answers) == 1 and isinstance(answers[0], ValueError)
    fanout.close()


def test_fanout_holds_more_requests_than_workers_without_deadlock():
    fanout, done = RowFanout(2), []
    for i in range(20):
        fanout.submit([i, i], lambda row: row, done.append)
    deadline = time.time() + 5
    while len(done) < 20 and time.time() < deadline:
        time.sleep(0.01)
    assert sorted(d[0] for d in done) == list(range(20))
    with pytest.raises(ValueError):
        fanout.submit([], lambda row: row, done.append)
    fanout.close()


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
