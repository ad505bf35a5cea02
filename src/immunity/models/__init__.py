from .io import clone_model, save_model
from .layers import DecoderLayer, block_output, decoder_layers, linear_modules, with_block_output
from .load import ARCHITECTURES, build_model, load_model, load_tokenizer
from .lora import attach_lora, lora_factors, merge_lora

__all__ = [
    "ARCHITECTURES",
    "DecoderLayer",
    "attach_lora",
    "block_output",
    "build_model",
    "clone_model",
    "decoder_layers",
    "linear_modules",
    "load_model",
    "load_tokenizer",
    "lora_factors",
    "merge_lora",
    "save_model",
    "with_block_output",
]
