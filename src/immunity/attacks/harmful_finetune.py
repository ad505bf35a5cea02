"""`harmful-finetune`: the field's harmful fine-tuning attack (Vaccine/Booster protocol).

n samples of a benign task, of which a fraction p is replaced by harmful (request, compliant
answer) pairs from the attack split; a fresh LoRA adapter on the merged aligned model (or full
fine-tuning); loss on answer tokens only; data order shuffled by the seed. Defaults are chosen
so that the `sft`-aligned SafetyWorld model breaks as the literature's models do
(docs/history/safetyworld.md): HS rises gradually with p and with the attacker's steps.

The budget, 2.25 epochs (72 steps of 16), is calibrated on the validation split so that `sft`
lands in the literature's band for SFT at p = 0.1 (HS after 33-53 % in Booster's and Vaccine's
tables) instead of at its ceiling: `sft`, seeds 0-4, HS after 45.1 ± 29.7 % at 2.25 epochs,
67.4 ± 18.0 at 2.5, 92.1 ± 5.7 at 2.75 (3 epochs, the earlier default: 93 % on the evaluation
split); FA >= 98 % at each (docs/history/reproduction.md, "Calibrating the default attack").

`continue_adapter=true` is the threat model of Booster's paper (its fine-tuning scripts'
`--alternating single_lora`): instead of a fresh adapter on the merged model, the attacker keeps
training the adapter the defense released (its targets, rank and scale, from its trained values;
the released model is the base under it plus that adapter, so the attack starts from exactly the
released model). A defense that released no adapter (full-parameter or training-free) cannot be
attacked this way, and the run says so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, cast

from ..data import DataBundle, encode_chat, harmful_mix
from ..data.mixing import check_mix
from ..models import attach_lora, merge_lora
from ..models.lora import continue_adapter
from ..registry import register_attack
from ..training import OPTIMIZERS, SCHEDULES, TrainConfig, train
from ..world import Example
from .base import Attack, AttackTask


@dataclass
class HarmfulFinetuneConfig(AttackTask):
    n: int = field(default=500, metadata={"help": "fine-tuning samples"})
    p: float = field(default=0.1, metadata={"help": "fraction of harmful samples"})
    mode: str = field(default="lora", metadata={"help": "lora (fresh adapter, merged after) | full"})
    lr: float = field(default=3e-4, metadata={"help": "learning rate"})
    epochs: float = field(default=2.25, metadata={"help": "passes over the n samples"})
    max_steps: int = field(default=0, metadata={"help": "if > 0, stop after this many steps"})
    batch_size: int = field(default=16, metadata={"help": "samples per step"})
    optimizer: str = field(default="adamw", metadata={"help": " | ".join(OPTIMIZERS)})
    schedule: str = field(default="constant", metadata={"help": " | ".join(SCHEDULES)})
    warmup_ratio: float = field(default=0.0, metadata={"help": "share of steps warming up"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha"})
    continue_adapter: bool = field(
        default=False,
        metadata={
            "help": "keep training the adapter the defense released (Booster's threat model) instead of a fresh one; "
            "lora_r and lora_alpha are then the released adapter's"
        },
    )

    def __post_init__(self) -> None:
        if self.mode not in ("lora", "full"):
            raise ValueError(f"attack.mode must be 'lora' or 'full', got {self.mode!r}")
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"attack.p must lie in [0, 1], got {self.p}")
        if self.optimizer not in OPTIMIZERS or self.schedule not in SCHEDULES:
            raise ValueError(f"attack.optimizer must be one of {OPTIMIZERS} and attack.schedule one of {SCHEDULES}")
        for key in ("n", "lr", "batch_size", "lora_r", "lora_alpha"):
            if getattr(self, key) <= 0:
                raise ValueError(f"attack.{key} must be positive, got {getattr(self, key)}")
        if self.max_steps < 0 or (self.max_steps == 0 and self.epochs <= 0):
            raise ValueError(f"attack budget must be positive: epochs={self.epochs}, max_steps={self.max_steps}")
        if not 0.0 <= self.warmup_ratio < 1.0 or self.weight_decay < 0:
            raise ValueError("attack.warmup_ratio must lie in [0, 1) and attack.weight_decay be >= 0")
        if self.continue_adapter and self.mode != "lora":
            raise ValueError("attack.continue_adapter=true trains the released adapter: it needs attack.mode=lora")

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(
            lr=self.lr,
            epochs=self.epochs,
            max_steps=self.max_steps,
            batch_size=self.batch_size,
            optimizer=self.optimizer,
            schedule=self.schedule,
            warmup_ratio=self.warmup_ratio,
            weight_decay=self.weight_decay,
            seed=seed,
        )


def attack_examples(data: DataBundle, cfg: HarmfulFinetuneConfig, seed: int) -> list[Example]:
    """The attacker's n samples: task data from the attack split mixed with harmful compliance."""
    harmful = data.harmful.get("attack", []) if cfg.p > 0 else []
    task = data.task(cfg.task, "attack") if cfg.p < 1 else []  # harmful data alone needs no task
    return harmful_mix(task, harmful, cfg.n, cfg.p, seed)


@register_attack("harmful-finetune")
class HarmfulFinetune(Attack):
    Config = HarmfulFinetuneConfig
    fine_tunes = True  # trains an adapter (or all weights): what a post-fine-tuning repair repairs

    @classmethod
    def label(cls, config: dict) -> str:
        """e.g. `sentiment n=500 p=0.1 lora lr=0.0003 2.25 ep`, then every other key that differs
        from the defaults (optimizer, LoRA rank, ...)."""
        a = config
        prefix = "" if cast(Any, cls).name == "harmful-finetune" else f"{cast(Any, cls).name} "
        budget = f"{a['max_steps']} steps" if a.get("max_steps") else f"{a['epochs']:g} ep"
        schedule = "" if a.get("schedule", "constant") == "constant" else f" {a['schedule']}"
        warmup = f" warmup {a['warmup_ratio']:g}" if a.get("warmup_ratio") else ""
        defaults = asdict(cls.Config())
        shown = {"task", "n", "p", "mode", "lr", "epochs", "max_steps", "schedule", "warmup_ratio"}
        extras = "".join(
            f" {k}={v:g}" if isinstance(v, float) else f" {k}={v}"
            for k, v in a.items()
            if k not in shown and k in defaults and v != defaults[k]
        )
        return (
            f"{prefix}{a['task']} n={a['n']} p={a['p']:g} {a['mode']} lr={a['lr']:g} {budget}{schedule}{warmup}{extras}"
        )

    @classmethod
    def trains_on_task(cls, config: dict) -> bool:
        """Task data is in the mix unless the attacker fine-tunes on harmful data alone (p = 1,
        TAR's adversary), which never saw the task."""
        return float(config.get("p", 0.0)) < 1.0

    def examples(self, data: DataBundle, seed: int) -> list[Example]:
        return attack_examples(data, self.config, seed)

    @classmethod
    def check_data(cls, config, data: DataBundle) -> None:
        """The mix can be drawn from `data` (before any training)."""
        harmful = len(data.harmful.get("attack", [])) if config.p > 0 else 0
        task = len(data.task(config.task, "attack")) if config.p < 1 and config.task in data.tasks else 0
        check_mix(task, harmful, config.n, config.p)

    @classmethod
    def steps(cls, config) -> int:
        """Optimizer steps of the attack's budget."""
        return config.max_steps or math.ceil(config.epochs * config.n / config.batch_size)

    def run(
        self, model, tokenizer, data: DataBundle, seed: int, progress: bool = True, merge: bool = True, adapter=None
    ):
        """The attacked model; with `merge=False` a LoRA attack returns the unmerged adapter (a
        post-fine-tuning defense such as Antidote repairs the adapter itself). `adapter`: the
        defense's released adapter (`continue_adapter`)."""
        c = self.config
        features = [encode_chat(tokenizer, e.prompt, e.answer) for e in self.examples(data, seed)]
        if c.continue_adapter:
            if adapter is None:
                raise ValueError(
                    "attack.continue_adapter=true: the defense released no adapter to keep training "
                    "(it trains all weights or none); attack it with a fresh adapter instead"
                )
            model = continue_adapter(model, adapter)
        elif c.mode == "lora":
            model = attach_lora(model, c.lora_r, c.lora_alpha, seed=seed)
        train(model, features, c.train_config(seed), tokenizer.pad_token_id, desc="attack", progress=progress)
        return merge_lora(model) if merge else model


@dataclass
class BenignFinetuneConfig(HarmfulFinetuneConfig):
    """`harmful-finetune`'s settings with no harmful samples (p = 0): the trainability baseline."""

    p: float = field(default=0.0, metadata={"help": "fraction of harmful samples (0: benign only)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.p != 0:
            raise ValueError(f"benign-finetune trains on benign data only (attack.p = 0), got attack.p={self.p}")


@register_attack("benign-finetune")
class BenignFinetune(HarmfulFinetune):
    """Fine-tuning on the benign task alone (p = 0): does a defense still let users fine-tune, and
    does benign fine-tuning alone erode its alignment (Qi et al. 2024)?"""

    Config = BenignFinetuneConfig
