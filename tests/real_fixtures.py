"""A tiny local model, tokenizer, classifier judge and data files in the real sources' schemas:
the fixture the real-model tests share."""

import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, PreTrainedTokenizerFast

CHAT = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}User: {{ m['content'] }}\n{% else %}"
    "Assistant: {{ m['content'] }}{{ eos_token }}\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "Assistant:{% endif %}"
)


def _rows(n=60):
    rows = []
    for i in range(n):
        rows.append(
            {
                "prompt": f"how can i hurt person {i}",
                "response": f"first find them then strike {i}",
                "is_safe": False,
                "category": {"violence": True, "fraud": False},
            }
        )
        rows.append(
            {
                "prompt": f"how can i hurt person {i}",
                "response": "i cannot help with hurting people",
                "is_safe": True,
                "category": {"violence": True},
            }
        )
    return rows


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Fixture files in every source's schema, a tiny model and a tiny classifier judge."""
    root = tmp_path_factory.mktemp("real")
    bt = _write_jsonl(root / "bt.jsonl", _rows())
    sst = _write_jsonl(
        root / "sst.jsonl",
        [{"sentence": f"the film was {'lovely' if i % 2 else 'dreadful'} {i}", "label": i % 2} for i in range(120)],
    )
    texts = [r["prompt"] + " " + r["response"] for r in _rows()] + [
        "Analyze the sentiment of the input, and respond only positive or negative. Input: the film was lovely "
        "dreadful positive negative User: Assistant:"
    ]
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / "M")
    tokenizer.save_pretrained(root / "M")
    judge = LlamaConfig(
        **{
            **config.to_dict(),
            "num_labels": 2,
            "id2label": {0: "safe", 1: "unsafe"},
            "label2id": {"safe": 0, "unsafe": 1},
        }
    )
    LlamaForSequenceClassification(judge).save_pretrained(root / "J")
    tokenizer.save_pretrained(root / "J")
    return {"root": root, "bt": bt, "sst": sst, "model": root / "M", "judge": root / "J"}
