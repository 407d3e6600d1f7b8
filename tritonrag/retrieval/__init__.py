"""Retrieval: what the `retriever` model serves (`retriever`), dense + BM25 fusion
(`hybrid`), exact vector search (`search/`), long-vector distances (`longvec`) and
recall helpers (`quality`)."""
