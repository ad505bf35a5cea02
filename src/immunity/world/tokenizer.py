"""A word-level tokenizer for SafetyWorld, exposed as a `PreTrainedTokenizerFast`.

It carries a chat template, so SafetyWorld and real Hugging Face models share one code path
(`apply_chat_template`, padding, `generate`, `decode`).
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}
USER, ASSISTANT = "<|user|>", "<|assistant|>"

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}" + USER + " {{ m['content'] }} "
    "{% else %}" + ASSISTANT + " {{ m['content'] }} {{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)


def build_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    specials = list(SPECIAL_TOKENS.values()) + [USER, ASSISTANT]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(words) - set(specials)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=core, **SPECIAL_TOKENS, additional_special_tokens=[USER, ASSISTANT])
    tok.chat_template = CHAT_TEMPLATE
    tok.clean_up_tokenization_spaces = False
    return tok
