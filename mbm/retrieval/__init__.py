"""Answering queries: parse, encode, nearest neighbours, filters, re-ranking."""
