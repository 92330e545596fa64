"""Persistence: the SQLite catalog (source of truth) and the derived FAISS index."""
