"""Layer discovery, LoRA attach/merge and model loading on tiny local models of many architectures."""

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from immunity.config import load_run_config
from immunity.engine.pipeline import run
from immunity.models import ARCHITECTURES, attach_lora, decoder_layers, linear_modules, load_model, merge_lora
from immunity.models.architectures import BY_MODEL_TYPE
from immunity.models.layers import decoder_layer_list

EXTRA = {
    "llama": dict(intermediate_size=64, num_key_value_heads=2),
    "qwen2": dict(intermediate_size=64, num_key_value_heads=1),
    "mistral": dict(intermediate_size=64, num_key_value_heads=2),
    "gemma2": dict(intermediate_size=64, num_key_value_heads=2, head_dim=16),
    "phi3": dict(intermediate_size=64, num_key_value_heads=2),
    "gpt_neox": dict(intermediate_size=64),
    "opt": dict(ffn_dim=64, word_embed_proj_dim=32),
    "mixtral": dict(intermediate_size=64, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(
        intermediate_size=64,
        num_key_value_heads=2,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
    ),
}
# The attention input projections each architecture has (the reference adapters of Booster, Antidote).
QKV = {"phi3": {"qkv_proj"}, "gpt_neox": {"query_key_value"}, "gpt2": {"c_attn"}}


def tiny_hf(model_type: str, layers: int = 3):
    ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if model_type == "gpt2":
        config = AutoConfig.for_model(
            "gpt2", vocab_size=100, n_embd=32, n_layer=layers, n_head=2, n_positions=64, **ids
        )
    else:
        config = AutoConfig.for_model(
            model_type,
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=layers,
            num_attention_heads=2,
            max_position_embeddings=64,
            **ids,
            **EXTRA[model_type],
        )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("model_type", list(EXTRA) + ["gpt2"])
def test_layer_discovery_finds_the_blocks_on_the_residual_path(model_type):
    model = tiny_hf(model_type)
    layers = decoder_layers(model)
    assert [layer.index for layer in layers] == [0, 1, 2]
    for layer in layers:
        seen = []
        h1 = layer.attention.register_forward_hook(lambda m, i, o: seen.append("attn"))
        h2 = layer.mlp.register_forward_hook(lambda m, i, o: seen.append("mlp"))
        model(torch.tensor([[1, 5, 6]]))
        h1.remove(), h2.remove()
        assert seen == ["attn", "mlp"], model_type  # both fire, in residual order, once per layer
    qkv = {name.rsplit(".", 1)[-1] for name in linear_modules(model, "qkv")}
    assert qkv == QKV.get(model_type, {"q_proj", "k_proj", "v_proj"})


def test_table_is_consulted_before_the_heuristic():
    assert "mixtral" not in BY_MODEL_TYPE and "opt" in BY_MODEL_TYPE  # mixtral: heuristic (tested above)
    # OPT's MLP lives on the layer itself (fc1 / fc2): only the table knows that fc2 is the block.
    opt = tiny_hf("opt")
    assert decoder_layers(opt)[0].mlp is opt.model.decoder.layers[0].fc2


class _Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn = nn.Linear(4, 4)
        self.mlp = nn.Module()
        self.mlp.experts = nn.ModuleList(nn.Linear(4, 4) for _ in range(8))  # longer than the layer list


class _MoE(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(_Layer() for _ in range(2))


def test_heuristic_never_picks_an_expert_list():
    name, layers = decoder_layer_list(_MoE())
    assert name == "layers" and len(layers) == 2


def test_heuristic_fails_clearly_when_unsure():
    with pytest.raises(ValueError, match="no decoder-layer list"):
        decoder_layer_list(nn.Sequential(nn.Linear(2, 2)))

    class Twins(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = _MoE().layers, _MoE().layers

    with pytest.raises(ValueError, match="ambiguous"):
        decoder_layer_list(Twins())


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "opt", "gpt_neox"])
def test_lora_targets_layers_and_merge_preserves_function(model_type):
    model = tiny_hf(model_type)
    peft_model = attach_lora(model, r=4, alpha=8, seed=0, targets="qkv", layers=[0, 1])
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert adapted == QKV.get(model_type, {"q_proj", "k_proj", "v_proj"})
    layer_names = [layer.name for layer in decoder_layers(peft_model)]
    assert not any(n.startswith(layer_names[2] + ".") for n in trainable)  # layer 2 has no adapter
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)  # a non-trivial adapter
    x = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        expected = peft_model(x).logits
        merged = merge_lora(peft_model)
        assert not any("lora_" in n for n, _ in merged.named_parameters())
        assert torch.allclose(merged(x).logits, expected, atol=1e-4)
    assert all(p.requires_grad for p in merged.parameters())  # trainable again, as if loaded


def test_lora_init_depends_on_its_seed_only_and_leaves_the_global_generator_alone():
    def adapter(seed, draws_before):
        model = tiny_hf("llama")
        torch.rand(draws_before)  # whatever ran earlier in the process
        peft_model = attach_lora(model, r=4, alpha=8, seed=seed)
        return torch.cat([p.detach().flatten() for n, p in peft_model.named_parameters() if "lora_A" in n])

    first = adapter(3, 0)
    assert torch.equal(first, adapter(3, 1000)) and not torch.equal(first, adapter(4, 0))
    model = tiny_hf("gpt2")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    attach_lora(model, r=4, alpha=8, seed=7)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.integration
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_pipeline_runs_on_local_model_dir(world, arch, tmp_path, tiny, tiny_model):
    path = tmp_path / arch
    tiny_model(arch, torch.float32).save_pretrained(path, safe_serialization=True)
    world.tokenizer.save_pretrained(path)
    model, tok = load_model(str(path))
    assert model.config.model_type == arch and len(tok) == len(world.tokenizer)
    for mode in ("lora", "full"):
        cfg = load_run_config(
            None, tiny + [f"model={path}", f"attack.mode={mode}", "defense.mode=lora"], defense="sft", seed=0
        )
        result = run(cfg, progress=False)
        assert result["model"] == str(path) and result["attack_config"]["mode"] == mode
        assert result["harmful_nll_after"] < result["harmful_nll_before"]  # the attack taught harmful answers


def test_load_model_refuses_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(str(tmp_path / "nope"))


MORE = ("mistral", "gemma2", "phi3", "opt", "gpt_neox", "mixtral", "qwen2_moe")
ARCH_SENSITIVE = {  # defenses whose mechanics touch architecture-specific parts (hooks on attention
    # outputs and layer freezing are covered by the discovery test above; all defenses: -m slow)
    "repnoise": ["defense.epochs=0.05"],  # MLP-output hooks (OPT: fc2 on flat tokens), logit lens
    "booster": ["defense.epochs=0.05"],  # q/k/v adapter targets
    "antidote": [],  # pruning the attack's adapter factors (MoE: flat-token inputs)
}


def _tiny_dir(world, tmp_path, arch):
    from immunity.models import build_model

    path = tmp_path / arch
    build_model(arch, len(world.tokenizer), 32, 3, 2, 64, 64, 0, world.tokenizer).save_pretrained(path)
    world.tokenizer.save_pretrained(path)
    return path


@pytest.mark.integration
@pytest.mark.parametrize("arch", MORE)
@pytest.mark.parametrize("defense", sorted(ARCH_SENSITIVE))
def test_defenses_and_the_attack_run_on_more_architectures(world, tmp_path, arch, defense):
    path = _tiny_dir(world, tmp_path, arch)
    overrides = [
        f"model={path}",
        "eval.max_prompts=4",
        "eval.max_new_tokens=8",
        "attack.n=32",
        "attack.max_steps=2",
        *ARCH_SENSITIVE[defense],
    ]
    result = run(load_run_config(None, overrides, defense=defense, seed=0), progress=False)
    assert result["model"] == str(path) and result["harmful_nll_after"] != result["harmful_nll_before"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", MORE)
def test_every_defense_runs_on_more_architectures(world, tmp_path, arch):
    """The full architecture x defense matrix (slow: `pytest -m slow`)."""
    from immunity.registry import DEFENSES

    budget = {
        "sophon": ["defense.loops=2", "defense.inner_steps=2", "defense.check_every=1"],
        "tar": ["defense.outer_steps=2", "defense.inner_steps=4", "defense.random_mapping_steps=2"],
        "circuit-breakers": ["defense.steps=3"],
        "lox": ["defense.search_rank=true"],
        "mlac": ["defense.epochs=0.05", "defense.inner_steps=2"],
    }
    path = _tiny_dir(world, tmp_path, arch)
    for defense in sorted(DEFENSES):
        extra = budget.get(
            defense, ["defense.epochs=0.05"] if "epochs" in DEFENSES[defense].Config.__dataclass_fields__ else []
        )
        overrides = [
            f"model={path}",
            "eval.max_prompts=4",
            "eval.max_new_tokens=8",
            "attack.n=32",
            "attack.max_steps=2",
            *extra,
        ]
        result = run(load_run_config(None, overrides, defense=defense, seed=0), progress=False)
        assert result["harmful_nll_after"] != result["harmful_nll_before"], defense  # the attack moved the model
