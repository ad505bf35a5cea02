"""E.T.'s block defense against an independent computation: after training, the defended block
maps the attacked stream h + i to (close to) what the original block made of h, on its attention
and MLP outputs, and only that block's weights change."""

import torch
import torch.nn.functional as F

from immunity.data import collate, encode_chat, from_world
from immunity.defenses.et import ETConfig, block_calls, defend_block
from immunity.models import clone_model, decoder_layers


def _outputs(model, layer, args, kwargs):
    found = decoder_layers(model)[layer]
    seen = []
    hooks = [m.register_forward_hook(lambda mod, a, out: seen.append(out[0] if isinstance(out, tuple) else out))
             for m in (found.attention, found.mlp)]
    with torch.no_grad():
        found.module(*args, **kwargs)
    for h in hooks:
        h.remove()
    return seen


def test_the_defended_block_undoes_the_attack_and_nothing_else_moves(world, tiny_model):
    model, tok = tiny_model("llama", torch.float32, layers=3), world.tokenizer
    pairs = from_world(world.data).harmful["align"][:32]
    batches = [collate([encode_chat(tok, e.prompt, e.answer) for e in pairs[i:i + 16]], tok.pad_token_id)
               for i in (0, 16)]
    push = 0.5 * torch.randn(32, generator=torch.Generator().manual_seed(1))  # the attack's edit i, on layer 0
    handle = decoder_layers(model)[0].module.register_forward_hook(
        lambda m, a, out: (out[0] + push, *out[1:]) if isinstance(out, tuple) else out + push)
    attacked = block_calls(model, 1, batches)
    handle.remove()
    clean = block_calls(model, 1, batches)
    torch.testing.assert_close(attacked[0][0][0] if attacked[0][0] else attacked[0][1]["hidden_states"],
                               (clean[0][0][0] if clean[0][0] else clean[0][1]["hidden_states"]) + push)

    def gap(m):  # independent: MSE between the block's outputs on h + i and the original's on h
        return sum(float(F.mse_loss(a, b)) for call_a, call_c in zip(attacked, clean)
                   for a, b in zip(_outputs(m, 1, *call_a), _outputs(original, 1, *call_c)))

    original = clone_model(model)
    before = gap(model)
    defended, _ = defend_block(model, 1, clean, attacked, ETConfig(lr=1e-2, epochs=40), seed=0, progress=False)
    assert gap(defended) < 0.5 * before, (before, gap(defended))
    moved = {n for n, p in defended.named_parameters() if not torch.equal(p, dict(original.named_parameters())[n])}
    assert moved and all(n.startswith("model.layers.1.") for n in moved), sorted(moved)
