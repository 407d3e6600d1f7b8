"""tritonrag: retrieval-augmented generation served by NVIDIA Triton.

The folders are the layers, top to bottom; a module imports only from its own folder
or from a folder listed below it:

    cli.py            the `tritonrag` command (serve, demo, index, synth)
    model_repository/ the Triton models; each `model.py` only parses requests, calls the
                      package and builds responses
    server/           operations: start tritonserver, supervise it, render the model repository
    retrieval/        the retriever: dense, BM25 and hybrid search over an index
    generation/       the generator: prompts and the decode engine
    serving/          helpers for the `model.py` files: Triton glue, BLS pipeline, engine link
    index/            corpora, the on-disk index and its BM25 statistics
    models/           where model weights come from, and the embedder
    common/           request checks, config.pbtxt parameters, crash-safe file writes
"""

__version__ = "0.1.0"
