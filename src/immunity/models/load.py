"""Load models: the built-in SafetyWorld model, a local HF directory, or a hub id.

Nothing is downloaded unless the user names a hub id. Weights load from safetensors only and
remote code stays off unless asked for.
"""

from __future__ import annotations

import os

import torch
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


def load_model(name_or_path: str, *, seed: int = 0, world_config=None,
               trust_remote_code: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """`safetyworld` (the built-in pretrained world model), a local directory, or a hub id."""
    if name_or_path == "safetyworld":
        from ..world import SafetyWorld, WorldConfig

        world = SafetyWorld(world_config or WorldConfig())
        return world.pretrained_model(seed), world.tokenizer
    if not os.path.isdir(name_or_path) and (name_or_path.startswith((".", "/", "~"))
                                            or name_or_path.count("/") > 1):
        raise FileNotFoundError(f"model directory {name_or_path!r} does not exist")
    # A string that is not a local directory is treated as a hub id: the user asked for it.
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, use_safetensors=True,
                                                 trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
