from .bundle import DataBundle, from_world
from .encode import IGNORE, collate, encode_chat, encode_text, prompt_ids
from .mixing import harmful_mix

__all__ = ["DataBundle", "IGNORE", "collate", "encode_chat", "encode_text", "from_world", "harmful_mix", "prompt_ids"]
