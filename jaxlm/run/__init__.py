"""What a run writes into its workdir and reads back: files, checkpoints, metrics, loading.

files.py (config.json, summary.json, metrics.jsonl), checkpoint.py (Orbax),
metrics.py (progress lines and metrics.jsonl records), load.py (one function
that loads a trained run: config, tokenizer, mesh, params, step).
"""
