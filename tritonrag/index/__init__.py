"""The data side: corpora read into passages (`corpus`), the vector index on disk
(`store`), its BM25 statistics (`bm25`) and invented facts for tests and load (`synthetic`)."""
