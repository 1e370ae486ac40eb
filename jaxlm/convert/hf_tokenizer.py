"""jaxlm's byte tokenizer as a Hugging Face tokenizer (tokenizer.json for PreTrainedTokenizerFast).

`python -m jaxlm.convert --to_hf` writes it beside a byte-level run's weights,
so `AutoTokenizer.from_pretrained(HF_DIR)` (and with it lm-eval's `hf` model,
pipelines, and the hub) maps text to the ids the run was trained on: id b is
the UTF-8 byte b, id 256 is `<|endoftext|>`, the run's end-of-text and
document separator. It is a byte-level BPE with no merges, built with the
`tokenizers` library (installed with transformers, or `pip install tokenizers`).
"""

from __future__ import annotations

from jaxlm.data.tokenizer import byte_to_unicode, save_hf

EOS = "<|endoftext|>"


def write_byte_tokenizer(out_dir: str, model_max_length: int) -> None:
  """Writes tokenizer.json and tokenizer_config.json of the byte tokenizer into out_dir."""
  try:  # optional (it comes with transformers): only a byte-level export writes a tokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  except ImportError:
    raise ImportError("writing the byte tokenizer needs the tokenizers library; install it "
                      "with `pip install tokenizers` (it comes with transformers)") from None
  vocab = {ch: b for b, ch in byte_to_unicode().items()}
  vocab[EOS] = 256
  tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([EOS])
  save_hf(tok, out_dir, EOS, model_max_length)
