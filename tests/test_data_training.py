import pytest
import torch
import torch.nn.functional as F

from immunity.attacks.harmful_finetune import HarmfulFinetuneConfig, attack_examples
from immunity.data import IGNORE, collate, encode_chat, from_world, harmful_mix
from immunity.training import TrainConfig, TrainingDiverged, lm_loss, train
from immunity.training.losses import answer_mask, token_ce


def test_labels_cover_answer_tokens_only(world):
    tok = world.tokenizer
    ex = world.data.harmful["align"][0]
    short = encode_chat(tok, ex.prompt, ex.answer)
    longer = encode_chat(tok, world.data.harmful["align"][7].prompt, "sure . done .")
    n_prompt = len(
        tok(
            tok.apply_chat_template(
                [{"role": "user", "content": ex.prompt}], add_generation_prompt=True, tokenize=False
            ),
            add_special_tokens=False,
        )["input_ids"]
    )
    assert all(label == IGNORE for label in short["labels"][:n_prompt])
    assert all(label != IGNORE for label in short["labels"][n_prompt:])
    answer = tok.decode([t for t in short["labels"] if t != IGNORE], skip_special_tokens=True)
    assert answer == ex.answer and short["labels"][-1] == tok.eos_token_id  # EOS is trained too

    batch = collate([short, longer], tok.pad_token_id)
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()  # padding masked
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tok.pad_token_id).all()


def test_token_ce_reads_only_the_positions_that_predict_answer_tokens(world):
    tok = world.tokenizer
    batch = collate(
        [encode_chat(tok, e.prompt, e.answer) for e in world.data.harmful["align"][:2]]
        + [encode_chat(tok, world.data.benign["align"][0].prompt, "sure . done .")],
        tok.pad_token_id,
    )
    torch.manual_seed(0)
    logits = torch.randn(*batch["input_ids"].shape, len(tok), dtype=torch.float64)
    loss = token_ce(logits, batch["labels"])
    # Independent: the mean over (b, t) with labels[b, t + 1] an answer token of -log softmax.
    terms = [
        -F.log_softmax(logits[b, t], -1)[batch["labels"][b, t + 1]]
        for b in range(logits.shape[0])
        for t in range(logits.shape[1] - 1)
        if batch["labels"][b, t + 1] != IGNORE
    ]
    assert torch.isclose(loss, torch.stack(terms).mean(), rtol=1e-12)
    # Logits at prompt and padding positions (and at the last position) do not matter ...
    predicts_answer = answer_mask(batch["labels"])
    changed = logits.clone()
    changed[~predicts_answer] = torch.randn_like(changed[~predicts_answer]) * 10
    assert torch.equal(token_ce(changed, batch["labels"]), loss)
    # ... those that predict an answer token do; so does lm_loss, through the model's logits.
    b, t = predicts_answer.nonzero()[0].tolist()
    changed[b, t, batch["labels"][b, t + 1]] += 1.0  # the target token's logit
    assert not torch.equal(token_ce(changed, batch["labels"]), loss)
    model = world.new_model(seed=0)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert torch.isclose(lm_loss(model, batch), token_ce(out.logits, batch["labels"]))


def test_harmful_mix_counts_and_validation():
    benign, harmful = list(range(1000)), list(range(-100, 0))
    mix = harmful_mix(benign, harmful, n=500, p=0.1, seed=3)
    assert len(mix) == 500 and sum(x < 0 for x in mix) == 50 and len(set(mix)) == 500
    assert harmful_mix(benign, harmful, 500, 0.1, seed=3) == mix
    assert harmful_mix(benign, harmful, 500, 0.1, seed=4) != mix
    assert sum(x < 0 for x in harmful_mix(benign, harmful, 500, 0.0, 0)) == 0
    with pytest.raises(ValueError, match="harmful samples"):
        harmful_mix(benign, harmful, 500, 0.5, 0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        harmful_mix(benign, harmful, 500, 1.5, 0)


def test_attack_data_comes_from_attack_split(world):
    cfg = HarmfulFinetuneConfig(n=200, p=0.2)
    mix = attack_examples(from_world(world.data), cfg, seed=0)
    harmful = [e for e in mix if e.kind == "harmful"]
    assert len(harmful) == 40
    attack_prompts = {e.prompt for e in world.data.harmful["attack"]}
    assert all(e.prompt in attack_prompts and e.answer.split()[0] in ("caution", "sure") for e in harmful)
    task_prompts = {e.prompt for e in world.data.tasks["sentiment"]["attack"]}
    assert all(e.prompt in task_prompts for e in mix if e.kind != "harmful")


def _tiny_train(world, seed):
    model = world.new_model(seed=0)
    feats = [encode_chat(world.tokenizer, e.prompt, e.answer) for e in world.data.harmful["align"][:64]]
    train(
        model,
        feats,
        TrainConfig(lr=1e-3, epochs=1, batch_size=16, seed=seed),
        world.tokenizer.pad_token_id,
        progress=False,
    )
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_training_is_deterministic_for_a_seed(world):
    a, b, c = _tiny_train(world, 1), _tiny_train(world, 1), _tiny_train(world, 2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # the seed changes data order


def test_length_grouped_batches_pad_less_and_see_every_example_once_per_pass():
    from immunity.training import batches, length_grouped, padding_fraction

    lengths = [3 + (i * 37) % 60 for i in range(200)]  # mixed lengths, as refusals beside long answers
    features = [{"input_ids": [1] * n, "labels": [1] * n, "position": [i]} for i, n in enumerate(lengths)]
    plain = batches(features, 16, 0, seed=3)
    with length_grouped():
        grouped = batches(features, 16, 0, seed=3)
        again = batches(features, 16, 0, seed=3)
    first, second = ([b["attention_mask"].sum(1).tolist() for b in grouped] for _ in range(2))
    assert first == [b["attention_mask"].sum(1).tolist() for b in again]  # the seed fixes the order
    assert first != second  # each pass groups anew
    assert sorted(n for batch in first for n in batch) == sorted(lengths)  # one pass: every example once
    assert padding_fraction(grouped) < padding_fraction(plain) / 2
    assert len(grouped) == len(plain) == 13
    unshuffled = batches(features, 16, 0, seed=3, shuffle=False)
    with length_grouped():
        assert [b["input_ids"].shape for b in batches(features, 16, 0, seed=3, shuffle=False)] == [
            b["input_ids"].shape for b in unshuffled
        ]  # fixed evaluation batches keep their order


def test_schedules_and_step_budget(world):
    assert TrainConfig(max_steps=7).total_steps(10_000) == 7
    assert TrainConfig(epochs=2, batch_size=16).total_steps(100) == 14
    with pytest.raises(ValueError):
        TrainConfig(schedule="exponential")


def test_attack_result_does_not_depend_on_earlier_random_draws(world):
    """A run's seed fixes everything: the LoRA init must not consume a drifting global RNG."""
    from immunity.attacks.harmful_finetune import HarmfulFinetune, HarmfulFinetuneConfig
    from immunity.models import build_model

    def attacked(draws_before):
        model = build_model("llama", len(world.tokenizer), 32, 2, 2, 64, 64, seed=0, tokenizer=world.tokenizer)
        torch.rand(draws_before)  # whatever ran earlier in the process
        out = HarmfulFinetune(HarmfulFinetuneConfig(n=32, epochs=1, lr=1e-3)).run(
            model, world.tokenizer, from_world(world.data), seed=5, progress=False
        )
        return torch.cat([p.detach().flatten() for p in out.parameters()])

    assert torch.equal(attacked(0), attacked(1000))


def test_training_stops_on_a_non_finite_loss_naming_stage_and_step(world):
    model = world.new_model(seed=0)
    feats = [encode_chat(world.tokenizer, e.prompt, e.answer) for e in world.data.harmful["align"][:64]]
    steps = []

    def explodes(model, batch):
        steps.append(1)
        loss = lm_loss(model, batch)
        return loss * float("nan") if len(steps) == 3 else loss

    with pytest.raises(TrainingDiverged, match="attack: the loss is nan at step 3"):
        train(
            model,
            feats,
            TrainConfig(lr=1e-3, epochs=1, batch_size=16),
            world.tokenizer.pad_token_id,
            step_loss=explodes,
            desc="attack",
            progress=False,
        )
