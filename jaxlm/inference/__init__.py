"""Using a trained model: sampling, the one generation loop, evaluation, export."""
