"""Each defense against its reference code's own conventions.

Every test re-derives, in the test, the quantity the way the reference repository's code
computes it (its hooks, masks, normalisers, trainable parameters, adapter scale; file and lines
named in the docstring; written from reading it, not copied), on a tiny float64 model, and
compares it with ours to 1e-6 relative. Where we deviate on purpose, the test pins the deviation
(it shows that the two differ exactly by what the defense's docstring says).
MLAC has no published code and is not here.
"""

import copy
import math

import torch
import torch.nn.functional as F

from immunity.data import IGNORE, from_world
from immunity.defenses import condition_number as cn
from immunity.defenses.antidote import input_norms, pruned_layers, wanda_prune, weight_matrix
from immunity.defenses.base import DefenseContext, with_adapter
from immunity.defenses.booster import BoosterConfig, booster_loss
from immunity.defenses.circuit_breakers import (
    CircuitBreakers,
    CircuitBreakersConfig,
    break_symmetry,
    circuit_breaker_step,
)
from immunity.defenses.lox import extrapolated_weights
from immunity.defenses.ntl import ntl_loss
from immunity.defenses.repnoise import repnoise_terms
from immunity.defenses.sophon import fts_gradient, suppression_loss
from immunity.defenses.t_vaccine import TVaccineConfig, t_vaccine_step
from immunity.defenses.tar import TARConfig, random_mapping, random_mapping_loss, retain_loss
from immunity.defenses.vaccine import VaccineConfig, vaccine_loss
from immunity.models import attach_lora, decoder_layers
from immunity.models.heads import logit_lens
from immunity.training.losses import mmd


def close(a, b, rel=1e-6):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return torch.allclose(a, b, rtol=rel, atol=rel * max(1e-12, b.abs().max().item()))


def grads(model):
    return {
        n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
        for n, p in model.named_parameters()
        if p.requires_grad or p.grad is not None
    }


def loss_of(model, batch):
    """The reference trainers' `compute_loss`: HF's mean CE over labels != -100, shifted."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)


def attention_modules(model):
    """The reference's way: modules whose class name says attention (trainer.py
    `get_leaf_modules_with_grad`), in model order, outermost only."""
    found = [m for n, m in model.named_modules() if type(m).__name__.endswith("Attention")]
    return found


# -- Vaccine ------------------------------------------------------------------------------
def test_vaccine_gradient_as_the_reference_trainer_computes_it(tiny_model, align_batch):
    """git-disl/Vaccine trainer.py:53-165: pass 1 backward hooks store grad_output[0] of every
    attention module; eps = rho * g / (||g|| + 1e-7) with one global norm (:143-150); pass 2 adds
    eps through `.data` in forward hooks (:118); only pass 2's gradient is kept. Adapter: LoRA
    r = 8, alpha = 4 on all seven maps (train.py:378-386; dropout off here for determinism)."""
    config = VaccineConfig(lora_dropout=0.0)
    model = with_adapter(tiny_model(), config, seed=0).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    batch = align_batch()
    reference = copy.deepcopy(model)

    stored, hooks = {}, []
    for module in attention_modules(reference):
        hooks.append(
            module.register_full_backward_hook(lambda m, gi, go: stored.__setitem__(m, go[0].detach().clone()))
        )
    loss_of(reference, batch).backward()
    for h in hooks:
        h.remove()
    reference.zero_grad()
    norm = torch.norm(torch.stack([g.norm(p=2) for g in stored.values()]), p=2)
    eps = {m: config.rho * g / (norm + 1e-7) for m, g in stored.items()}

    def add_eps(module, args, output):
        first = output[0] if isinstance(output, tuple) else output
        shifted = first + eps[module]
        return (shifted, *output[1:]) if isinstance(output, tuple) else shifted

    hooks = [m.register_forward_hook(add_eps) for m in eps]
    loss_of(reference, batch).backward()
    for h in hooks:
        h.remove()

    vaccine_loss(model, batch, config.rho).backward()
    ours, theirs = grads(model), grads(reference)
    assert set(ours) == set(theirs) and all("lora_" in n for n in ours)
    for name in ours:
        assert close(ours[name], theirs[name]), name


# -- T-Vaccine ----------------------------------------------------------------------------
def test_t_vaccine_trains_what_the_reference_trains(tiny_model, align_batch):
    """Lslland/T-Vaccine trainer.py:227-250 (`unfreeze_activate_layers` freezes only the LoRA of
    *attention* modules outside the active set) and models/modeling_llama_my.py:926-935
    (inactive layers under reentrant checkpointing: no input of a layer below the lowest active
    one requires grad, so nothing there gets a gradient; above it, checkpointed layers do pass
    gradients to their trainable MLP adapters). Re-derived here by freezing inactive attention
    adapters and detaching the hidden state entering the lowest active layer. Perturbation as
    Vaccine on the active layers only, norm over them (trainer.py:252-340)."""
    config = TVaccineConfig(lora_dropout=0.0)
    model = with_adapter(tiny_model(layers=4), config, seed=0).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    batch = align_batch()
    active = [1, 3]
    reference = copy.deepcopy(model)
    layers = decoder_layers(reference)
    for layer in layers:
        if layer.index not in active:
            for p in layer.attention.parameters():
                p.requires_grad_(False)
    detach = layers[min(active)].module.register_forward_pre_hook(
        lambda m, args, kwargs: ((args[0].detach(), *args[1:]), kwargs), with_kwargs=True
    )
    stored = {}
    hooks = [
        layers[i].attention.register_full_backward_hook(
            lambda m, gi, go, i=i: stored.__setitem__(i, go[0].detach().clone())
        )
        for i in active
    ]
    loss_of(reference, batch).backward()
    for h in hooks:
        h.remove()
    reference.zero_grad()
    norm = torch.norm(torch.stack([g.norm() for g in stored.values()]))

    def add(i):
        def hook(module, args, output):
            first = output[0] if isinstance(output, tuple) else output
            shifted = first + config.rho * stored[i] / (norm + 1e-7)
            return (shifted, *output[1:]) if isinstance(output, tuple) else shifted

        return hook

    hooks = [layers[i].attention.register_forward_hook(add(i)) for i in active]
    loss_of(reference, batch).backward()
    for h in hooks:
        h.remove()
    detach.remove()

    t_vaccine_step(model, batch, active, config.rho)
    ours, theirs = grads(model), grads(reference)
    for name in ours:
        assert close(ours[name], theirs.get(name, torch.zeros_like(ours[name]))), name
    trained = {n for n, g in ours.items() if g.abs().sum() > 0}
    layer_of = lambda n: int(n.split(".h.")[1].split(".")[0])  # noqa: E731
    assert {layer_of(n) for n in trained if ".mlp." in n} == {1, 2, 3}  # MLP adapters from layer 1 up
    assert {layer_of(n) for n in trained if ".attn." in n} == {1, 3}  # attention adapters: active only
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)  # flags restored


# -- Booster ------------------------------------------------------------------------------
def test_booster_gradient_and_adapter_as_the_reference(tiny_model, align_batch, harmful_batch):
    """git-disl/Booster trainer.py:271-380 (harmful backward; perturb `param.data -=
    alpha * g / (||g|| + 1e-7)` with ||g|| the norm of per-parameter norms; backward at the
    perturbed point; restore by adding back; alignment backward; g_f + lambda g_h - lambda g_h~)
    and train.py:285,335-343 (LoRA r = 32, lora_alpha = 4, q/k/v, no dropout: scale 0.125)."""
    config = BoosterConfig()
    model = with_adapter(tiny_model(), config, seed=0).eval()
    scales = {m.scaling["default"] for m in model.modules() if hasattr(m, "lora_A")}
    assert scales == {4 / 32}
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad}
    assert adapted == {"c_attn"}  # GPT-2's fused q/k/v
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    align, harmful = align_batch(), harmful_batch(4, 6)
    reference = copy.deepcopy(model)
    params = {n: p for n, p in reference.named_parameters() if p.requires_grad}
    loss_of(reference, harmful).backward()
    stored = {n: p.grad.clone() for n, p in params.items()}
    reference.zero_grad()
    norm = torch.norm(torch.stack([g.norm(p=2) for g in stored.values()]), p=2) + 1e-7
    with torch.no_grad():
        for n, p in params.items():
            p.data -= config.alpha * stored[n] / norm
    loss_of(reference, harmful).backward()
    perturbed = {n: p.grad.clone() for n, p in params.items()}
    reference.zero_grad()
    with torch.no_grad():
        for n, p in params.items():
            p.data += config.alpha * stored[n] / norm
    loss_of(reference, align).backward()
    expected = {n: p.grad + config.lam * stored[n] - config.lam * perturbed[n] for n, p in params.items()}

    assert booster_loss(model, align, harmful, config.lam, config.alpha)[0] is None  # gradients written
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert close(p.grad, expected[n]), n


# -- RepNoise -----------------------------------------------------------------------------
class ReferenceMMD:
    """representation_noising/loss.py:17-52 (`MMD_loss`), as written: all pairs through
    expanded tensors, bandwidth from `L2_distance.data`, mean(XX + YY - XY - YX)."""

    @staticmethod
    def __call__(source, target, kernel_mul=2.0, kernel_num=5):
        n_samples = source.shape[0] + target.shape[0]
        total = torch.cat([source, target], dim=0)
        total0 = total.unsqueeze(0).expand(total.shape[0], total.shape[0], total.shape[1])
        total1 = total.unsqueeze(1).expand(total.shape[0], total.shape[0], total.shape[1])
        l2 = ((total0 - total1) ** 2).sum(2)
        bandwidth = torch.sum(l2.data) / (n_samples**2 - n_samples)
        bandwidth /= kernel_mul ** (kernel_num // 2)
        kernels = sum(torch.exp(-l2 / (bandwidth * kernel_mul**i)) for i in range(kernel_num))
        b = source.shape[0]
        return torch.mean(kernels[:b, :b] + kernels[b:, b:] - kernels[:b, b:] - kernels[b:, :b])


def reference_masked_ce(logits, ids, mask, zero_logits=True):
    """loss.py:55-71 (`masked_token_ce_loss`): logits at positions whose own token is unmasked
    are multiplied by 0, labels outside the mask (and any label id 0) are ignored."""
    shift_logits, shift_labels = logits[..., :-1, :], ids[..., 1:].clone()
    if zero_logits:
        shift_logits = shift_logits * mask[..., :-1].unsqueeze(-1)
    shift_labels = shift_labels * mask[..., 1:]
    shift_labels[shift_labels == 0] = -100
    return F.cross_entropy(shift_logits.flatten(0, 1), shift_labels.flatten().long())


def test_mmd_bandwidth_carries_no_gradient_as_in_both_references():
    """RepNoise loss.py:35 and NTL ntl_cifar_stl.py:68 compute the bandwidth from `.data`."""
    torch.manual_seed(0)
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randn(6, 5, dtype=torch.float64)
    ours = torch.autograd.grad(mmd(x, y), x)[0]
    theirs = torch.autograd.grad(ReferenceMMD()(x, y), x)[0]
    assert close(mmd(x, y), ReferenceMMD()(x, y)) and close(ours, theirs)

    def attached(source, target):  # the same MMD with the bandwidth left in the graph
        z = torch.cat([source, target])
        l2 = ((z[None] - z[:, None]) ** 2).sum(-1)
        bandwidth = l2.sum() / (len(z) ** 2 - len(z)) / 4
        k = sum(torch.exp(-l2 / (bandwidth * 2**i)) for i in range(5))
        return k[:6, :6].mean() + k[6:, 6:].mean() - 2 * k[:6, 6:].mean()

    assert not close(ours, torch.autograd.grad(attached(x, y), x)[0], rel=1e-3)


def test_repnoise_terms_as_the_reference_loss(tiny_model, harmful_batch):
    """loss.py:74-130 (`rep_noise_loss`): MMD per *sequence* (T x d flattened, masked positions
    zeroed in activations and noise, :92-100), mean over layers; ascent term = [CE + sum over
    hidden_states of CE(head(norm(h)))] / len(hidden_states) + 1 (:118-128). The mask here is
    the answer tokens (the reference's "tokens that differ from the paired refusal"). Pinned
    deviation: the reference's masked CE zeroes the logits predicting the first answer token
    (:65); ours keeps them, so ours equals the reference only once that zeroing is removed."""
    model = tiny_model("llama")
    harmful = harmful_batch(0, 6)
    torch.manual_seed(11)
    noise_mmd, ascent = repnoise_terms(model, harmful)

    activations = []
    hooks = [layer.mlp.register_forward_hook(lambda m, i, o: activations.append(o)) for layer in decoder_layers(model)]
    out = model(input_ids=harmful["input_ids"], attention_mask=harmful["attention_mask"], output_hidden_states=True)
    for h in hooks:
        h.remove()
    mask = harmful["labels"] != IGNORE
    torch.manual_seed(11)
    noise = 0
    for hidden in activations:
        m = mask.unsqueeze(-1).expand(hidden.size()).to(hidden.dtype)
        hiddens = hidden * m
        gaussian = torch.randn_like(hiddens) * m
        noise += ReferenceMMD()(hiddens.view(hiddens.size(0), -1), gaussian.view(gaussian.size(0), -1))
    assert close(noise_mmd, noise / len(activations))

    ids, fmask = harmful["input_ids"], mask.to(out.logits.dtype)

    def reference_ascent(zero_logits):
        total = reference_masked_ce(out.logits, ids, fmask, zero_logits)
        for h in out.hidden_states:
            total = total + reference_masked_ce(logit_lens(model, h), ids, fmask, zero_logits)
        return total / len(out.hidden_states) + 1

    assert close(ascent, reference_ascent(zero_logits=False), rel=1e-6)
    quirk = reference_ascent(zero_logits=True)  # the pinned deviation: 100x the agreement above
    assert abs(ascent.item() - quirk.item()) / quirk.item() > 1e-4


# -- Circuit Breakers ---------------------------------------------------------------------
def test_circuit_breaker_loss_as_the_reference(world, tiny_model, harmful_batch, align_batch):
    """GraySwanAI/circuit-breakers src/lorra_circuit_breaker.py `compute_loss` (read in the
    ks-fahad/CircuitBreakers fork): states stacked at the target layers, the cb mask is the
    attention mask (request and response), inner product of unit vectors, ReLU,
    sum / (|targets| * #tokens); retain: the stacked states 0..max(target)+1 (the truncated
    model's), masked, `norm(...).nanmean()` over every position; coefficients alpha * t/300 etc."""
    model = attach_lora(tiny_model(layers=4), r=16, alpha=16, seed=0, layers=[0, 1, 2]).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    cb, retain = harmful_batch(0, 5), align_batch(0, 3)
    targets, step, total, alpha = (1, 2), 40, 150, 10.0

    def states(batch):
        return model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
        ).hidden_states

    progress = step / 300 * (150 / total)
    retain_coeff, cb_coeff = alpha * progress, alpha * (1 - progress)
    with torch.no_grad(), model.disable_adapter():
        orig_retain = torch.stack(states(retain)[:4])
        orig_cb = torch.stack([states(cb)[l] for l in targets])
    retain_mask = retain["attention_mask"].repeat(4, 1, 1).unsqueeze(-1).to(orig_retain.dtype)
    lora_retain = torch.stack(states(retain)[:4]) * retain_mask
    retain_loss = torch.norm(lora_retain - orig_retain * retain_mask, dim=-1, p=2).nanmean()
    cb_mask = cb["attention_mask"].repeat(len(targets), 1, 1).unsqueeze(-1).to(orig_cb.dtype)
    lora_cb = torch.stack([states(cb)[l] for l in targets])
    inner = (lora_cb / lora_cb.norm(dim=-1, keepdim=True)) * (orig_cb / orig_cb.norm(dim=-1, keepdim=True)) * cb_mask
    cb_loss = torch.relu(inner.sum(dim=-1)).sum() / cb_mask.sum()
    expected = retain_coeff * retain_loss + cb_coeff * cb_loss
    ours = circuit_breaker_step(model, cb, retain, step, total, alpha, targets)
    assert close(ours, expected)


def test_circuit_breaker_adapter_sits_on_layers_up_to_the_highest_target(world, tiny_model):
    """`transform_layers=-1` puts LoRA on layers 0..max(target) (lorra_circuit_breaker.py, train):
    later layers stay bit-identical through training; earlier ones move."""
    model = tiny_model("llama", torch.float32, layers=4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    context = DefenseContext(world.tokenizer, from_world(world.data), seed=0, progress=False)
    released = CircuitBreakers(CircuitBreakersConfig(steps=3, lr=1e-2, target_layers=(1,))).apply(model, context)
    moved = {n for n, p in released.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(n.startswith(("model.layers.0.", "model.layers.1.")) for n in moved)
    assert context.notes["val_cosine"] < 0.999  # three steps already reroute the held-out completions


def test_circuit_breaker_zero_init_is_a_stationary_point_and_ours_is_not(tiny_model, harmful_batch, align_batch):
    """At the reference's zero B the adapted states equal the originals, so the loss's gradient
    vanishes (float64: exactly 0 up to rounding); `break_symmetry` gives it a gradient."""

    def first_gradient(std):
        model = attach_lora(tiny_model(layers=4), r=16, alpha=16, seed=0, layers=[0, 1, 2]).eval()
        break_symmetry(model, std, seed=0)
        circuit_breaker_step(model, harmful_batch(0, 5), align_batch(0, 3), 1, 150, 10.0, (1, 2)).backward()
        return max(p.grad.abs().max().item() for n, p in model.named_parameters() if "lora_" in n)

    assert first_gradient(0.0) < 1e-12
    assert first_gradient(1e-4) > 1e-6


def test_circuit_breaker_reroutes_a_tiny_model(world, tiny_model):
    """The defense's own criterion moves: the held-out cosine starts at 1 (no adapter change) and
    falls well below it at the default lr within 40 steps."""
    model = tiny_model("llama", torch.float32, layers=4)
    context = DefenseContext(world.tokenizer, from_world(world.data), seed=0, progress=False)
    config = CircuitBreakersConfig(steps=40, target_layers=(1, 2))
    CircuitBreakers(config).apply(model, context)
    assert context.notes["val_cosine"] < 0.9


# -- Antidote -----------------------------------------------------------------------------
def test_antidote_prunes_as_the_reference(tiny_model, harmful_batch, batch_of, world):
    """git-disl/Antidote utils.py:313-337 (`find_layers`: nn.Linear modules whose name contains
    "lora"), :475-505 (`WrappedGPT.add_batch`: running mean of ||X_j||^2 per sample),
    :690-737 (W_metric = |W| sqrt(scaler_row); stable ascending sort; the lowest
    int(cols * (1 - dense_ratio)) of each row keep mask 0, the rest 1) and train.py:529-535
    (`param.data *= (1 - mask)`). Calibration one sample at a time, as the reference."""
    model = attach_lora(tiny_model("llama"), r=8, alpha=16, seed=0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    from immunity.world import complied

    examples = [complied(world.lexicon, e) for e in world.data.harmful["align"][:6]]
    reference = copy.deepcopy(model)
    subset = {n: m for n, m in reference.named_modules() if type(m) is torch.nn.Linear and "lora" in n}
    scaler = {n: torch.zeros(m.weight.shape[1], dtype=torch.float64) for n, m in subset.items()}
    counts = {n: 0 for n in subset}

    def add_batch(name):
        def hook(module, inp, out):
            x = inp[0].reshape(-1, inp[0].shape[-1]).t()
            scaler[name] *= counts[name] / (counts[name] + 1)
            counts[name] += 1
            scaler[name] += torch.norm(x.double(), p=2, dim=1) ** 2 / counts[name]

        return hook

    hooks = [m.register_forward_hook(add_batch(n)) for n, m in subset.items()]
    for e in examples:  # batch 1, no padding
        single = batch_of([e])
        reference(input_ids=single["input_ids"])
    for h in hooks:
        h.remove()
    dense_ratio = 0.25  # the reference's name for our `ratio`: the share of each row pruned
    for name, module in subset.items():
        metric = module.weight.data.abs() * torch.sqrt(scaler[name].reshape(1, -1))
        mask = torch.ones_like(metric)
        order = torch.sort(metric, dim=-1, stable=True)[1]
        mask.scatter_(1, order[:, : int(metric.shape[1] * (1 - dense_ratio))], 0)
        module.weight.data *= 1 - mask

    ours = pruned_layers(model)
    assert set(ours) == set(subset)
    norms = input_norms(model, ours, [batch_of(examples)])
    for name, module in ours.items():
        wanda_prune(weight_matrix(module).data, norms[name], dense_ratio)
    for (n, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        assert torch.equal(p, q), n


# -- TAR ----------------------------------------------------------------------------------
def test_tar_retain_and_random_mapping_losses_as_the_reference(tiny_model, batch_of, world, align_batch):
    """rishub-tamirisa/tamper-resistance modules/objectives.py:335-368 (retain: LM loss + mean
    over *all* hidden states, the embedding output included, of mean_t ||h_base - h||) and
    :275-332 (random mapping: every position of the forget batch, every hidden state, mean of
    1 - |cos(h, R[x_t])|). On a batch without padding ours equal the reference; the pinned
    deviation is that ours leave padding positions out of the means (the reference averages
    them in)."""
    model, base = tiny_model(), tiny_model(seed=1)
    unpadded = batch_of(world.data.harmful["align"][:1])
    padded = align_batch(0, 2)
    mapping = torch.randn(model.config.vocab_size, model.config.hidden_size, dtype=torch.float64)

    def reference_retain(batch):
        with torch.no_grad():
            base_states = base(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
            ).hidden_states
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        lm = loss_of(model, batch)
        return lm + torch.mean(
            torch.stack([torch.norm(b - h, dim=-1).mean() for b, h in zip(base_states, out.hidden_states)])
        )

    def reference_mapping(batch):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        streams = [s.view(-1, s.size(-1)) for s in out.hidden_states]
        rand = mapping[batch["input_ids"].view(-1)]
        return torch.stack([(1 - torch.abs(F.cosine_similarity(f, rand, dim=-1))).mean() for f in streams]).mean()

    assert close(retain_loss(model, base, unpadded), reference_retain(unpadded))
    assert close(random_mapping_loss(model, unpadded, mapping), reference_mapping(unpadded))
    assert not close(retain_loss(model, base, padded), reference_retain(padded), rel=1e-3)


def test_tar_random_mapping_phase_moves_the_weights(tiny_model, harmful_batch, align_batch):
    """The reference trains phase 0 with its own optimizer; ours once ran it on an optimizer
    whose warm-up schedule was never stepped (lr 0): max |dW| was 0 after 20 steps."""
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    forget, retain = iter([harmful_batch(4 * k) for k in range(5)]), iter([align_batch(4 * k) for k in range(5)])
    log = random_mapping(model, list(model.parameters()), forget, retain, TARConfig(random_mapping_steps=5), seed=0)
    assert len(log) == 5 and log[-1] < log[0]
    assert max((p - b).abs().max().item() for p, b in zip(model.parameters(), before)) > 1e-5


# -- NTL ----------------------------------------------------------------------------------
def test_ntl_loss_is_the_reference_kl_form_times_the_class_count(tiny_model, align_batch, harmful_batch):
    """conditionWang/NTL src/ntl/ntl_cifar_stl.py:284-302: KLDivLoss (mean over batch and
    classes) of log-softmax against one-hot targets, alpha = beta = 0.1, `clamp(loss2, 0, 1)` and
    `clamp(mmd, 0, 1)` only when above 1, loss1 - loss2 * mmd. Per answer token with C = |V|
    classes. Ours is C x the reference (nats), with the same clamps."""
    model = tiny_model()
    source, target = align_batch(0, 3), harmful_batch(10, 5)
    classes = model.config.vocab_size

    def kl_onehot(batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        keep = batch["labels"][:, 1:] != IGNORE
        onehot = F.one_hot(batch["labels"][:, 1:][keep], classes).to(logits.dtype)
        return torch.nn.KLDivLoss()(F.log_softmax(logits[keep], dim=1), onehot)

    with torch.no_grad():
        ours, parts = ntl_loss(model, source, target, alpha=0.1, beta=0.1, layer=1, classes=classes)
        loss2 = kl_onehot(target) * 0.1
        mmd_loss = parts["mmd"] * 0.1
        reference = kl_onehot(source) - min(loss2.item(), 1.0) * min(mmd_loss, 1.0)
    assert close(ours, classes * reference)


# -- SOPHON -------------------------------------------------------------------------------
def test_sophon_suppression_and_weighting_against_the_reference(tiny_model, harmful_batch):
    """ChiangE/Sophon classification/inverse_loss.py:49-80: first-order MAML (an SGD step on
    the support batch, the query loss at the adapted weights), query losses weighted by their
    sample counts. Pinned deviations: (1) its "inverse CE" is CrossEntropy(1 - logits, y)
    (:76), -log softmax(-z)_y, where ours is the paper's -log(1 - p_y); (2) for an LM the count
    is answer tokens, not sequences."""
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, dtype=torch.float64)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 1, IGNORE], [IGNORE, 2, 6, 0, 4]])
    keep = labels[:, 1:] != IGNORE
    z, y = logits[:, :-1][keep], labels[:, 1:][keep]
    reference_ice = F.cross_entropy(1 - z, y)
    assert close(reference_ice, -F.log_softmax(-z, -1).gather(1, y[:, None]).mean())
    ours = suppression_loss(logits, labels, "inverse")
    assert close(ours, -torch.log1p(-F.softmax(z, -1).gather(1, y[:, None])).mean())
    assert not close(ours, reference_ice, rel=1e-2)

    model = tiny_model()
    params = dict(model.named_parameters())
    support, query = [harmful_batch(0), harmful_batch(4)], [harmful_batch(20, 3), harmful_batch(30, 1)]
    ours, _ = fts_gradient(model, params, support, query, inner_lr=0.3, kind="inverse")
    twin = copy.deepcopy(model)
    sgd = torch.optim.SGD(twin.parameters(), lr=0.3)
    per_query, sequences, tokens = [], [], []
    for s_batch, q_batch in zip(support, query):
        sgd.zero_grad()
        loss_of(twin, s_batch).backward()
        sgd.step()
        logits = twin(input_ids=q_batch["input_ids"], attention_mask=q_batch["attention_mask"]).logits
        per_query.append(
            torch.autograd.grad(suppression_loss(logits, q_batch["labels"], "inverse"), list(twin.parameters()))
        )
        sequences.append(q_batch["input_ids"].shape[0])
        tokens.append(int((q_batch["labels"][:, 1:] != IGNORE).sum()))
    by_tokens = [sum(w * g[i] for w, g in zip(tokens, per_query)) / sum(tokens) for i in range(len(ours))]
    by_sequences = [sum(w * g[i] for w, g in zip(sequences, per_query)) / sum(sequences) for i in range(len(ours))]
    assert all(close(a, b) for a, b in zip(ours, by_tokens))
    assert not all(close(a, b, rel=1e-3) for a, b in zip(ours, by_sequences))


# -- LoX ----------------------------------------------------------------------------------
def test_lox_matches_the_reference_state_dict_loop(tiny_model):
    """VITA-Group/LoX safety/LoX.py:27-41: for every state-dict entry with more than one
    dimension, SVD of dW in float32, S[k:] = 0, W_aligned + coef * U diag(S) V^T."""
    base = tiny_model("llama", torch.float32)
    aligned = copy.deepcopy(base)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in aligned.parameters():
            p.add_(0.01 * torch.randn_like(p))
    k, coef = 3, 1.25
    w_aligned, w_base = aligned.state_dict(), base.state_dict()
    expected = {}
    for name, w in w_aligned.items():
        if w.dim() > 1:
            u, s, vt = torch.linalg.svd((w - w_base[name]).float(), full_matrices=False)
            s[k:] = 0
            expected[name] = w + coef * (u @ torch.diag(s) @ vt)
    ours = extrapolated_weights(base, aligned, k, coef)
    for name, value in ours.items():
        assert close(value, expected[name], rel=1e-5), name
    assert set(expected) >= set(ours)  # tied weights appear once in parameters, twice in a state dict


# -- Condition number ---------------------------------------------------------------------
def test_condition_number_regularisers_as_the_reference():
    """amberyzheng/model-immunization-cond-num models/model.py:67-93 (`reg_loss`: S = X^T X,
    r1 = s_max^2/2 - ||S||_F^2/(2K), r2 = 1/(||S||_F^2/(2K) - s_min^2/2), K = X.size(-1)) and
    utils/loss.py:32-46 (eigvalsh of S + 1e-6 I in float64, s_min the smallest above 1e-6).
    Pinned deviations: ours divides S by the number of tokens, and K is the feature width
    (the reference's K is its *input's* last dimension, 224 for images)."""
    torch.manual_seed(0)
    x = torch.randn(50, 6, dtype=torch.float64)
    s = x.T @ x
    kappa = torch.linalg.eigvalsh(s + torch.eye(6, dtype=torch.float64) * 1e-6)
    s_max, s_min = kappa.max(), kappa[kappa > 1e-6].min()
    r1 = s_max**2 / 2 - torch.norm(s, p="fro") ** 2 / (2 * 6)
    r2 = 1 / (torch.norm(s, p="fro") ** 2 / (2 * 6) - s_min**2 / 2)
    assert close(cn.r_well(s), r1) and close(cn.r_ill(s), r2)
    assert close(cn.feature_hessian(x), s / 50)  # the pinned normalisation
    assert math.isclose(cn.condition_number(s), (s_max / s_min).item(), rel_tol=1e-9)
