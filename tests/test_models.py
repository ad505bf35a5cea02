import pytest
import torch

from immunity.config import load_run_config
from immunity.bench.pipeline import run
from immunity.models import ARCHITECTURES, attach_lora, build_model, decoder_layers, load_model, merge_lora
from immunity.models.layers import linear_module_names


def _tiny(world, arch):
    return build_model(arch, len(world.tokenizer), hidden=32, layers=3, heads=2, intermediate=64,
                       max_positions=64, seed=0, tokenizer=world.tokenizer)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_layer_discovery_finds_blocks_without_class_names(world, arch):
    model = _tiny(world, arch)
    layers = decoder_layers(model)
    assert [layer.index for layer in layers] == [0, 1, 2]
    for layer in layers:
        # The attention and MLP blocks really are on the residual path: hooks on them fire.
        seen = []
        h1 = layer.attention.register_forward_hook(lambda m, i, o: seen.append("attn"))
        h2 = layer.mlp.register_forward_hook(lambda m, i, o: seen.append("mlp"))
        model(torch.tensor([[1, 5, 6]]))
        h1.remove(), h2.remove()
        assert seen == ["attn", "mlp"]
    assert linear_module_names(model)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_lora_merge_preserves_function(world, arch):
    model = _tiny(world, arch)
    peft_model = attach_lora(model, r=4, alpha=8)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
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


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_pipeline_runs_on_local_model_dir(world, arch, tmp_path, tiny):
    path = tmp_path / arch
    _tiny(world, arch).save_pretrained(path, safe_serialization=True)
    world.tokenizer.save_pretrained(path)
    model, tok = load_model(str(path))
    assert model.config.model_type == arch and len(tok) == len(world.tokenizer)
    for mode in ("lora", "full"):
        cfg = load_run_config(None, tiny + [f"model={path}", f"attack.mode={mode}", "defense.mode=lora"],
                              defense="sft", seed=0)
        result = run(cfg, progress=False)
        for key in ("hs_before", "helpful_before", "hs_after", "fa_after"):
            assert 0.0 <= result[key] <= 1.0


def test_load_model_refuses_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(str(tmp_path / "nope"))
