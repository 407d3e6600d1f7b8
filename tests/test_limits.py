import pytest

from tritonrag.limits import RequestError, check_range, decode_question


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
