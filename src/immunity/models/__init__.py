from .layers import DecoderLayer, decoder_layers, linear_module_names
from .load import ARCHITECTURES, build_model, load_model
from .lora import attach_lora, merge_lora

__all__ = ["ARCHITECTURES", "DecoderLayer", "attach_lora", "build_model", "decoder_layers",
           "linear_module_names", "load_model", "merge_lora"]
