"""Build tiny models locally; load a local HF directory or a hub id.

Nothing is downloaded unless the user names a hub id. Weights load from safetensors only and
remote code stays off unless asked for.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from transformers import (AutoModelForCausalLM, AutoTokenizer, GPT2Config, LlamaConfig,
                          PreTrainedModel, PreTrainedTokenizerBase, Qwen2Config)

ARCHITECTURES = ("llama", "qwen2", "gpt2")


def build_model(arch: str, vocab_size: int, hidden: int, layers: int, heads: int,
                intermediate: int, max_positions: int, seed: int, tokenizer=None) -> PreTrainedModel:
    """A randomly initialised causal LM of a given architecture, built locally (no download)."""
    ids = {}
    if tokenizer is not None:
        ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    if arch == "llama":
        config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                             num_hidden_layers=layers, num_attention_heads=heads,
                             num_key_value_heads=heads, max_position_embeddings=max_positions,
                             tie_word_embeddings=True, **ids)
    elif arch == "qwen2":
        config = Qwen2Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                             num_hidden_layers=layers, num_attention_heads=heads,
                             num_key_value_heads=max(1, heads // 2), max_position_embeddings=max_positions,
                             tie_word_embeddings=True, **ids)
    elif arch == "gpt2":
        config = GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads,
                            n_inner=intermediate, n_positions=max_positions, **ids)
    else:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()  # training code switches modes itself


PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def check_model_dir(name_or_path: str) -> None:
    """A local model directory a run can use, or one clear error: it exists, has a config,
    safetensors weights that open (pickle weights are refused: we never unpickle), and
    tokenizer files. A name that is not a path is a hub id and is checked when loaded."""
    path = Path(name_or_path).expanduser()
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or path.exists()
    if not looks_local:
        return
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {name_or_path!r} does not exist")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json; not a Hugging Face model directory")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickled = [f for f in PICKLE_WEIGHTS if (path / f).exists()]
        hint = f" (found {', '.join(pickled)}: pickle weights are never loaded; convert them to safetensors)" \
            if pickled else ""
        raise FileNotFoundError(f"{path}: no *.safetensors weights{hint}")
    for file in weights:
        try:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():
                    handle.get_slice(name)
        except Exception as err:  # safetensors raises its own error types
            raise ValueError(f"{file}: corrupt or truncated safetensors file ({err})") from err
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise FileNotFoundError(f"{path}: no tokenizer files (one of {', '.join(TOKENIZER_FILES)})")


def load_model(name_or_path: str, *, trust_remote_code: bool = False
               ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A local HF directory, or a hub id (downloaded because the user named it)."""
    check_model_dir(name_or_path)
    name_or_path = str(Path(name_or_path).expanduser()) if name_or_path.startswith("~") else name_or_path
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, use_safetensors=True,
                                                 trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
