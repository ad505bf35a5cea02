from .encode import IGNORE, collate, encode_chat, encode_text, prompt_ids
from .mixing import harmful_mix

__all__ = ["IGNORE", "collate", "encode_chat", "encode_text", "harmful_mix", "prompt_ids"]
