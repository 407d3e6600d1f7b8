import re

import pytest

from tritonrag.server.repository import SOURCE_REPOSITORY, render_repository, set_parameter

MODELS = ("embedder", "retriever", "generator")


def test_every_stage_batches_dynamically_up_to_32():
    for model in MODELS:
        text = (SOURCE_REPOSITORY / model / "config.pbtxt").read_text()
        assert "max_batch_size: 32" in text
        assert re.search(r"dynamic_batching \{\s*max_queue_delay_microseconds: \d+", text)
        # the generator is a model-less forwarder on CPU instances; its engine model follows the device
        assert ("kind: KIND_CPU" if model == "generator" else "kind: KIND_AUTO") in text
    engine = (SOURCE_REPOSITORY / "generator_stream" / "config.pbtxt").read_text()
    assert "kind: KIND_AUTO" in engine and "decoupled: true" in engine
    for ensemble in ("rag_ensemble", "rag_retrieve"):
        assert (SOURCE_REPOSITORY / ensemble / "1").is_dir()
        assert 'platform: "ensemble"' in (SOURCE_REPOSITORY / ensemble / "config.pbtxt").read_text()


def test_set_parameter_replaces_only_that_value():
    text = '{ key: "a", value: { string_value: "1" } },\n{ key: "ab", value: { string_value: "2" } }'
    out = set_parameter(text, "a", 'x "quoted" \\ path')
    assert out == '{ key: "a", value: { string_value: "x \\"quoted\\" \\\\ path" } },\n' \
                  '{ key: "ab", value: { string_value: "2" } }'
    with pytest.raises(KeyError):
        set_parameter(text, "missing", "v")


def test_render_applies_overrides_and_leaves_the_source_alone(tmp_path):
    before = (SOURCE_REPOSITORY / "retriever" / "config.pbtxt").read_text()
    out = render_repository(tmp_path / "repo", {"retriever": {"index_path": "/data/idx"},
                                                "generator_stream": {"generator_model": "Qwen/Qwen2.5-1.5B-Instruct"}})
    assert 'string_value: "/data/idx"' in (out / "retriever" / "config.pbtxt").read_text()
    assert 'string_value: "Qwen/Qwen2.5-1.5B-Instruct"' in (out / "generator_stream" / "config.pbtxt").read_text()
    assert (out / "embedder" / "1" / "model.py").exists()
    assert (SOURCE_REPOSITORY / "retriever" / "config.pbtxt").read_text() == before


def test_scheduling_settings_are_rendered(tmp_path):
    from tritonrag.server.repository import set_scheduling

    target = render_repository(tmp_path / "repo", {}, scheduling={
        "generator": {"max_batch_size": 1, "max_queue_delay_us": 0, "instances": 2},
        "rag_ensemble": {"max_batch_size": 1}})
    generator = (target / "generator" / "config.pbtxt").read_text()
    assert re.search(r"^max_batch_size: 1$", generator, re.MULTILINE)
    # the instance count changes, the model's own kind stays (the generator forwarder is KIND_CPU)
    assert "max_queue_delay_microseconds: 0" in generator and "count: 2, kind: KIND_CPU" in generator
    assert re.search(r"^max_batch_size: 1$", (target / "rag_ensemble" / "config.pbtxt").read_text(), re.MULTILINE)
    assert "max_batch_size: 32" in (target / "embedder" / "config.pbtxt").read_text()  # untouched
    with pytest.raises(KeyError):
        render_repository(tmp_path / "bad", {}, scheduling={"generator": {"turbo": 1}})
    with pytest.raises(ValueError):
        set_scheduling(generator, instances=0)
