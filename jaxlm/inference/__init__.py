"""Using a trained model: sampling, generation for both model kinds, evaluation, export.

sampling.py (how a token is drawn), generate.py (the one decoding loop),
evaluate.py (loss, bits per byte, calibration), seq2seq.py (scoring the
encoder-decoder's restorations), export.py (params to a plain file).
"""
