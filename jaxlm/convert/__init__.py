"""Hugging Face import and export of GPT-2 and Llama-family causal LMs.

  python -m jaxlm.convert --from_hf=HF_DIR --workdir=RUN [--dtype=float32]
  python -m jaxlm.convert --to_hf=HF_DIR --workdir=RUN [--step=N] [--dtype=...]

`--from_hf` reads a directory written by `save_pretrained` (config.json and
safetensors: one file or shards with an index) of a GPT2LMHeadModel,
LlamaForCausalLM or MistralForCausalLM and writes a new jaxlm run (config.json
and an Orbax checkpoint at step 0) that `python -m jaxlm.generate` and
`python -m jaxlm.evaluate` read, with the model's own tokenizer files copied
into it where jaxlm can use them (else it names jaxlm's byte tokenizer).
`--to_hf` writes a run's checkpoint as config.json and model.safetensors that
`transformers.AutoModelForCausalLM.from_pretrained` loads, with a tokenizer.json
that `AutoTokenizer` loads: the byte tokenizer's twin (hf_tokenizer.py) or the
copied Hugging Face files (a sentencepiece tokenizer is not converted).
Unsupported options are errors that name the key.
"""

from jaxlm.convert.hf import from_hf, model_config, read_hf, to_hf

__all__ = ["from_hf", "model_config", "read_hf", "to_hf"]
