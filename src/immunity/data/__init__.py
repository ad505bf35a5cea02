from .bundle import DataBundle, from_world
from .encode import IGNORE, collate, encode_chat, encode_text, header_ends, header_ids, prompt_ids
from .mixing import harmful_mix

__all__ = [
    "DataBundle",
    "IGNORE",
    "collate",
    "encode_chat",
    "encode_text",
    "from_world",
    "header_ends",
    "header_ids",
    "harmful_mix",
    "prompt_ids",
]
