import numpy as np
import pytest

from tritonrag.common.request_checks import (
    INT32_MAX,
    RequestError,
    check_embeddings,
    Limits,
    check_range,
    check_sampling,
    decode_passages,
    decode_question,
    question_bytes,
    required,
)


def test_good_question_is_decoded():
    assert decode_question("Où est la gare ?".encode(), 100) == "Où est la gare ?"


@pytest.mark.parametrize("raw, message", [
    (b"", "empty"),
    (b"   \n\t", "empty"),
    (b"\xff\xfe bad", "UTF-8"),
    (b"x" * 101, "limit is 100"),
])
def test_bad_questions_are_refused_with_a_reason(raw, message):
    with pytest.raises(RequestError, match=message):
        decode_question(raw, 100)


def test_range_checks():
    assert check_range("top_k", None, 3, 10) == 3
    assert check_range("top_k", 10, 3, 10) == 10
    for bad in (0, -1, 11, 2**31 - 1):
        with pytest.raises(RequestError, match="top_k must be between 1 and 10"):
            check_range("top_k", bad, 3, 10)


def test_question_bytes_checks_text_as_the_server_does():
    assert question_bytes("Où ?") == "Où ?".encode()
    assert question_bytes(b"ok") == b"ok"
    # an undecodable command-line byte arrives as a lone surrogate: the byte goes back, and
    # is refused as the server would refuse it, instead of failing to encode
    argv = b"caf\xe9".decode("utf-8", "surrogateescape")
    with pytest.raises(RequestError, match=r"^question is not valid UTF-8 \(byte 3\)$"):
        question_bytes(argv)
    with pytest.raises(RequestError, match="^question is empty$"):
        question_bytes("  ")
    assert len(question_bytes("x" * 10_000)) == 10_000       # the size limit is the server's setting
    with pytest.raises(RequestError, match="the limit is 100"):
        question_bytes("x" * 101, 100)
    assert str(required("question")) == "question is required"


def test_int32_bound_and_sampling_checks():
    assert check_range("top_k", INT32_MAX, 3, INT32_MAX) == INT32_MAX
    with pytest.raises(RequestError, match="^top_k must be between 1 and 2147483647, got 4294967296$"):
        check_range("top_k", 2**32, 3, INT32_MAX)
    assert check_sampling(None, None) == (0.0, 1.0)
    assert check_sampling(0.7, 0.9) == (0.7, 0.9)
    for temperature, top_p, message in [(-1, None, r"temperature must be in \[0, 100\], got -1.0"),
                                        (float("nan"), None, "temperature must be in"),
                                        (None, 0, r"top_p must be in \(0, 1\], got 0.0"),
                                        (None, 1.5, "top_p must be in")]:
        with pytest.raises(RequestError, match=message):
            check_sampling(temperature, top_p)


def _as_numpy(x):
    return x


def _as_torch(x):
    """A GPU input reaches the retriever as a torch tensor (DLPack); a CPU one checks the same."""
    import torch

    return torch.from_numpy(np.array(x))


@pytest.mark.parametrize("convert", [_as_numpy, _as_torch])
def test_embeddings_are_checked_for_shape_values_and_length(convert):
    if convert is _as_torch:
        pytest.importorskip("torch")
    good = np.full((2, 4), 0.5, dtype=np.float64)
    checked = check_embeddings(convert(good), 4, 10.0)
    assert str(checked.dtype).endswith("float32") and tuple(checked.shape) == (2, 4)
    assert type(checked) is type(convert(good))  # a tensor stays a tensor (on its device)
    nan_row = good.copy()
    nan_row[1, 2] = np.nan
    inf_row = good.copy()
    inf_row[0, 0] = -np.inf
    for vectors, message in [
        (np.zeros((2, 3)), r"EMBEDDING must be \[n, 4\] with n >= 1, got \[2, 3\]"),
        (np.zeros((0, 4)), "n >= 1, got \\[0, 4\\]"),
        (np.zeros(4), "got \\[4\\]"),
        (nan_row, "row 1 holds NaN or infinite values"),
        (inf_row, "row 0 holds NaN or infinite values"),
        (np.full((1, 4), 3e38, dtype=np.float32), "row 0 has length 6e\\+38; the limit is 10"),
        (np.full((1, 4), 5.5), "row 0 has length 11; the limit is 10"),
    ]:
        with pytest.raises(RequestError, match=message):
            check_embeddings(convert(vectors), 4, 10.0)


def test_passages_are_bounded_in_count_and_bytes():
    assert decode_passages([b"a\xffb", "text"], 2, 7) == ["a\ufffdb", "text"]   # at both limits: taken
    with pytest.raises(RequestError, match="3 passages; the limit is 2"):
        decode_passages([b"a", b"b", b"c"], 2, 100)
    with pytest.raises(RequestError, match="the limit is 7"):
        decode_passages([b"abcd", "\u00e9\u00e9"], 2, 7)      # 4 + 4 UTF-8 bytes


def test_a_huge_passage_list_is_refused_before_any_is_decoded():
    class Undecodable(bytes):
        def decode(self, *args):
            raise AssertionError("decoded before the limits were checked")

    limits = Limits()
    with pytest.raises(RequestError, match=f"the limit is {limits.max_passages}"):
        decode_passages([Undecodable(b"x")] * 1000, limits.max_passages, limits.max_passages_bytes)
    with pytest.raises(RequestError, match=f"the limit is {limits.max_passages_bytes}"):
        size = limits.max_passages_bytes // limits.max_passages + 1
        decode_passages([Undecodable(b"x" * size)] * limits.max_passages, limits.max_passages,
                        limits.max_passages_bytes)


def test_both_generator_models_read_the_passage_limits_from_their_config():
    """config.pbtxt of generator and generator_stream hold the parameters, left empty: Limits holds
    the one default (read_limits reads every Limits field by name)."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "tritonrag" / "model_repository"
    for model in ("generator", "generator_stream"):
        text = (root / model / "config.pbtxt").read_text()
        for name in ("max_passages", "max_passages_bytes"):
            assert f'{{ key: "{name}", value: {{ string_value: "" }} }}' in text, (model, name)
