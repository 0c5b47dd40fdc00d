"""Knowledge retrieval: ingestion, embeddings, FAISS + BM25 hybrid search."""
