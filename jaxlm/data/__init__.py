"""Data: embedded corpora, tokenizers and input pipelines."""
