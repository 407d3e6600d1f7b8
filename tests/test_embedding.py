import numpy as np
import torch

from tritonrag.models.embedding import FAMILIES, detect_family, pool


def test_family_from_model_name():
    assert detect_family("intfloat/multilingual-e5-large-instruct") is FAMILIES["e5-instruct"]
    assert detect_family("intfloat/e5-base-v2").query_prefix == "query: "
    assert detect_family("BAAI/bge-small-en-v1.5").pooling == "cls"
    assert detect_family("builtin:all-MiniLM-L6-v2") is FAMILIES["sentence-transformers"]


def test_mean_pooling_ignores_padding():
    hidden = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask, "mean").tolist() == [[2.0, 2.0]]
    assert pool(hidden, mask, "cls").tolist() == [[1.0, 1.0]]


def test_real_minilm_puts_questions_near_their_passages(embedder):
    passages = ["The Eiffel Tower is a wrought-iron tower in Paris, France.",
                "Photosynthesis turns light, water and carbon dioxide into sugar in plants.",
                "The with statement wraps a block with a context manager's enter and exit methods."]
    questions = ["Where is the Eiffel Tower?", "How do plants make sugar?", "What does Python's with statement do?"]
    p = embedder.embed_passages(passages)
    q = embedder.embed_queries(questions)
    assert p.shape == (3, 384) and p.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(p, axis=1), 1.0, rtol=1e-5)
    assert (q @ p.T).argmax(axis=1).tolist() == [0, 1, 2]


def test_batching_does_not_change_an_embedding(embedder):
    texts = ["short", "a much longer sentence that forces padding of the short one in a batch"]
    together = embedder.embed_queries(texts)
    alone = np.concatenate([embedder.embed_queries([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_on_device_embeddings_equal_the_host_ones(embedder):
    """A GPU embedder instance keeps EMBEDDING on its device (DLPack); same values as the host copy."""
    texts = ["What is a lambda?", "How do I define a generator function?"]
    on_device = embedder.embed_queries_on_device(texts)
    assert isinstance(on_device, torch.Tensor) and on_device.device == embedder.device
    assert on_device.dtype == torch.float32 and tuple(on_device.shape) == (2, 384)
    np.testing.assert_allclose(on_device.numpy(), embedder.embed_queries(texts), atol=1e-6)


def test_warm_up_encodes_every_batch_size_and_changes_no_embedding(embedder):
    before = embedder.embed_queries(["Where is the Eiffel Tower?"])
    seen = []
    encode = embedder._encode
    embedder._encode = lambda texts, **kw: seen.append(len(texts)) or encode(texts, **kw)
    try:
        seconds = embedder.warm_up(batch_sizes=(1, 3), words=(2, 40))
    finally:
        embedder._encode = encode
    assert seen == [1, 1, 3, 3] and seconds > 0
    np.testing.assert_array_equal(embedder.embed_queries(["Where is the Eiffel Tower?"]), before)
