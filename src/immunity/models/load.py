"""Build tiny models locally; load a local HF directory or a hub id.

Nothing is downloaded unless the user names a hub id. Weights load from safetensors only and
remote code stays off unless asked for.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peft import PeftModel

import torch
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
)

ARCHITECTURES = ("llama", "qwen2", "gpt2")
# Further architectures `build_model` makes tiny random configs of (tests, benchmarks): their
# config keyword for the MLP width and any keywords they need.
MORE_ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "mistral": ("intermediate_size", {}),
    "gemma2": ("intermediate_size", {"head_dim": None}),
    "phi3": ("intermediate_size", {}),
    "gpt_neox": ("intermediate_size", {}),
    "opt": ("ffn_dim", {"word_embed_proj_dim": None}),
    "mixtral": ("intermediate_size", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen2_moe": (
        "intermediate_size",
        {
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": None,
            "shared_expert_intermediate_size": None,
        },
    ),
}


def build_model(
    arch: str,
    vocab_size: int,
    hidden: int,
    layers: int,
    heads: int,
    intermediate: int,
    max_positions: int,
    seed: int,
    tokenizer=None,
) -> PreTrainedModel:
    """A randomly initialised causal LM of a given architecture, built locally (no download)."""
    ids = {}
    if tokenizer is not None:
        ids = dict(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    if arch == "llama":
        config: Any = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=max_positions,
            tie_word_embeddings=True,
            **ids,
        )
    elif arch == "qwen2":
        config = Qwen2Config(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 2),
            max_position_embeddings=max_positions,
            tie_word_embeddings=True,
            **ids,
        )
    elif arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size,
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            n_inner=intermediate,
            n_positions=max_positions,
            **ids,
        )
    elif arch in MORE_ARCHITECTURES:
        width, extra = MORE_ARCHITECTURES[arch]
        sizes = {
            "head_dim": hidden // heads,
            "word_embed_proj_dim": hidden,
            "moe_intermediate_size": intermediate // 2,
            "shared_expert_intermediate_size": intermediate // 2,
        }
        extra = {k: sizes[k] if v is None else v for k, v in extra.items()}
        heads_kv = {} if arch in ("gpt_neox", "opt") else {"num_key_value_heads": heads}
        ids = ids or {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
        config = AutoConfig.for_model(
            arch,
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=max_positions,
            **{width: intermediate},
            **heads_kv,
            **extra,
            **ids,
        )
    else:
        raise ValueError(
            f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES + tuple(MORE_ARCHITECTURES))}"
        )
    with torch.random.fork_rng(devices=[]):  # the init from `seed` alone; the global generator untouched
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
        check_hub_model(name_or_path)
        return
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {name_or_path!r} does not exist")
    if is_adapter_dir(path):
        base = adapter_base(path)
        if not base:
            raise FileNotFoundError(f"{path}: adapter_config.json names no base model")
        check_model_dir(base)
        return
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json; not a Hugging Face model directory")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickled = [f for f in PICKLE_WEIGHTS if (path / f).exists()]
        hint = (
            f" (found {', '.join(pickled)}: pickle weights are never loaded; convert them to safetensors)"
            if pickled
            else ""
        )
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


def is_adapter_dir(path: Path) -> bool:
    """A PEFT adapter directory (an attack saved with --adapter-only): adapter, no full model."""
    return (path / "adapter_config.json").is_file() and not (path / "config.json").is_file()


def adapter_base(path: Path) -> str:
    return json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path") or ""


def check_hub_model(name: str) -> None:
    """A hub id the user named: fine if cached or reachable; one clear line otherwise (rather
    than a minute of retries and tracebacks when there is no network)."""
    import huggingface_hub

    if isinstance(huggingface_hub.try_to_load_from_cache(name, "config.json"), str):
        return
    try:
        exists = huggingface_hub.file_exists(name, "config.json")
    except Exception as err:  # no network, DNS failure, offline mode
        raise FileNotFoundError(
            f"model {name!r} is not a local directory, not in the local hub cache, and the hub "
            f"cannot be reached ({type(err).__name__}); give a local directory"
        ) from err
    if not exists:
        raise FileNotFoundError(f"model {name!r} is not a local directory and not a model on the hub")


PLAIN_CHAT_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}{% for m in messages %}{% if m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% else %}Assistant: {{ m['content'] }}{{ eos_token }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(
    name_or_path: str,
    *,
    trust_remote_code: bool = False,
    dtype: str = "auto",
    device_map: str = "",
    quantization: str = "",
) -> tuple[PreTrainedModel | PeftModel, PreTrainedTokenizerBase]:
    """A local HF directory, or a hub id (downloaded because the user named it). `dtype` keeps
    the saved precision unless asked ("auto"); `device_map` spreads a large model over devices;
    `quantization` ("4bit" | "8bit") loads frozen base weights through bitsandbytes."""
    check_model_dir(name_or_path)
    name_or_path = str(Path(name_or_path).expanduser()) if name_or_path.startswith("~") else name_or_path
    if Path(name_or_path).is_dir() and is_adapter_dir(Path(name_or_path)):
        from peft import PeftModel

        base, tokenizer = load_model(
            adapter_base(Path(name_or_path)),
            trust_remote_code=trust_remote_code,
            dtype=dtype,
            device_map=device_map,
            quantization=quantization,
        )
        tokenizer = load_tokenizer(name_or_path, trust_remote_code)
        return PeftModel.from_pretrained(base, name_or_path), tokenizer  # unmerged: a repair can read it
    tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code)
    kwargs = {"dtype": DTYPES[dtype]}
    if device_map:
        kwargs["device_map"] = device_map
    if quantization:
        try:
            import bitsandbytes  # noqa: F401  (the optional extra `quant`)
            from transformers import BitsAndBytesConfig
        except ImportError as err:
            raise ValueError("quantized loading needs the `quant` extra: pip install 'immunity[quant]'") from err
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=quantization == "4bit", load_in_8bit=quantization == "8bit"
        )
    model = AutoModelForCausalLM.from_pretrained(
        name_or_path, use_safetensors=True, trust_remote_code=trust_remote_code, **kwargs
    )
    return model, tokenizer


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """A model's tokenizer, ready to pad and to prompt: the adapter directory's own, else its base
    model's; a pad token (eos if it has none) and a chat template (a plain one if it has none)."""
    name_or_path = str(Path(name_or_path).expanduser()) if name_or_path.startswith("~") else name_or_path
    path = Path(name_or_path)
    if path.is_dir() and is_adapter_dir(path) and not any((path / f).exists() for f in TOKENIZER_FILES):
        return load_tokenizer(adapter_base(path), trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        warnings.warn(
            f"{name_or_path}: the tokenizer has no chat template; using a plain 'User: / Assistant:' one", stacklevel=2
        )
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    return tokenizer
