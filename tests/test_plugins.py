"""The plugin contract: a new attack with its own metric, or a new judge, is one class (one file
in the package) and works everywhere; a missing or misspelled member fails at registration."""

from dataclasses import dataclass, field, replace

import pytest

from immunity import registry
from immunity.attacks.base import Attack, AttackTask
from immunity.config import load_run_config
from immunity.engine.pipeline import run
from immunity.evaluation.judges import JudgeSettings, check_judge, judge_choices, make_judge
from immunity.evaluation.judges.base import by_kind
from immunity.reports.analysis import typed
from immunity.reports.tables import by_attack_table


@pytest.fixture
def registered():
    """The registry; the toy plugins a test registers are removed after it."""
    tables = (registry.ATTACKS, registry.JUDGES, registry.DEFENSES)
    before = [set(t) for t in tables]
    yield registry
    for table, names in zip(tables, before):
        for name in set(table) - names:
            del table[name]


@dataclass
class ShoutConfig(AttackTask):
    times: int = field(default=2, metadata={"help": "how often the request is repeated, in capitals"})


def test_a_new_attack_with_its_own_metric_is_one_class(registered, tiny):
    @registered.register_attack("shout")
    class Shout(Attack):
        """Inference time: nothing trained; its own metric is HS on the requests shouted."""

        Config = ShoutConfig
        writes_weights = False
        attacker_metric = "hs_shouted"

        def run(self, model, tokenizer, data, seed, progress=True, merge=True, adapter=None):
            self.notes = {"times": self.config.times}
            return model

        def extra_prompt_sets(self, sets):
            return {
                "shouted": [
                    replace(e, prompt=" ".join([e.prompt.upper()] * self.config.times)) for e in sets.get("harmful", [])
                ]
            }

    world_keys = [o for o in tiny if not o.startswith("attack.")]  # the toy attack has its own keys
    result = run(load_run_config(None, world_keys + ["attack=shout", "attack.times=3"]), progress=False)
    assert result["attack"] == "shout" and result["attack_notes"] == {"times": 3}
    assert set(result["extra_after"]) == {"hs_shouted"} and result["extra_after"]["hs_shouted"] is not None
    row = typed([result])[0]
    assert row.attacker_hs() == result["extra_after"]["hs_shouted"]  # what leaderboards read for it
    cell = by_attack_table([row]).splitlines()[2]
    assert f"{100 * row.attacker_hs():.1f} ± 0.0 / {100 * row.hs_after:.1f} ± 0.0" in cell
    assert row.label() == "shout sentiment times=3"


def test_a_new_judge_is_one_class(registered):
    @registered.register_judge("length")
    class LengthJudge:
        """Harmful = a long answer; refusal by refusal phrases."""

        usage = "length (answers longer than 5 words)"

        @classmethod
        def build(cls, path, settings, lexicon):
            return cls()

        def score(self, records):
            return by_kind(
                records, lambda rs: [{"refused": False, "harmful": len(r["response"].split()) > 5} for r in rs]
            )

    check_judge("length", real_data=True)  # any data, no model needed: the defaults of the contract
    judge = make_judge("length", JudgeSettings())
    verdicts = judge.score([{"kind": "harmful", "response": "one two three four five six", "prompt": "p", "label": ""}])
    assert verdicts == [{"refused": False, "harmful": True}]
    assert "length (answers longer than 5 words)" in judge_choices()


def test_a_misspelled_or_missing_member_fails_at_registration(registered):
    with pytest.raises(TypeError, match="did you mean 'writes_weights'"):

        @registered.register_attack("typo")
        class Typo(Attack):
            Config = ShoutConfig
            writes_weight = False

            def run(self, *args, **kwargs):
                return None

    with pytest.raises(TypeError, match="lacks apply"):

        @registered.register_defense("incomplete")
        class Incomplete:
            stage = "alignment"
            Config = ShoutConfig

    assert "typo" not in registered.ATTACKS and "incomplete" not in registered.DEFENSES


@dataclass
class ToyConfig:
    strength: float = 1.0


class _Judge:
    @classmethod
    def build(cls, path, settings, lexicon):
        return cls()

    def score(self, records):
        return []


def _mistakes():
    """The five registration mistakes a newcomer makes, each with what the error must say."""
    from immunity.defenses.base import Defense, Stage

    class StringStage(Defense):
        stage = "post_alignment"
        Config = ToyConfig

        def apply(self, model, context):
            return model

    class DictConfig(Defense):
        stage = Stage.ALIGNMENT
        Config = dict

        def apply(self, model, context):
            return model

    class WrongApply(Defense):
        stage = Stage.ALIGNMENT
        Config = ToyConfig

        def apply(self, model):
            return model

    class RealData(_Judge):
        data = "realdata"

    class NoTask(Attack):
        Config = ToyConfig

        def run(self, model, tokenizer, data, seed, progress=True, merge=True, adapter=None):
            return model

    return [
        ("defense", StringStage, "stage must be a Stage (Stage.ALIGNMENT"),
        ("defense", DictConfig, "Config must be a dataclass"),
        ("defense", WrongApply, "apply(self, model) must take (model, context)"),
        ("judge", RealData, "data must be one of 'safetyworld', 'real', 'any', got 'realdata'"),
        ("attack", NoTask, "lacks the field(s) task"),
    ]


@pytest.mark.parametrize(
    "index", range(5), ids=["stage-string", "config-dict", "apply-arguments", "judge-data", "attack-without-task"]
)
def test_each_registration_mistake_fails_at_import_with_one_line(registered, index):
    kind, cls, message = _mistakes()[index]
    register = {
        "defense": registered.register_defense,
        "attack": registered.register_attack,
        "judge": registered.register_judge,
    }[kind]
    with pytest.raises(TypeError) as raised:
        register(f"mistake-{index}")(cls)
    text = str(raised.value)
    assert message in text and "\n" not in text
    assert f"mistake-{index}" not in {**registered.DEFENSES, **registered.ATTACKS, **registered.JUDGES}


def test_a_defense_is_a_config_and_an_apply_on_the_shared_base(registered, tiny):
    from immunity.defenses.base import Defense, Stage

    @registered.register_defense("toy-scale")
    class ToyScale(Defense):
        """Scales the output embedding (a toy: the base class holds the config)."""

        stage = Stage.POST_ALIGNMENT
        Config = ToyConfig

        def apply(self, model, context):
            model.get_output_embeddings().weight.data.mul_(self.config.strength)
            return model

    assert ToyScale(ToyConfig(0.5)).config.strength == 0.5
    world_keys = [o for o in tiny if not o.startswith("defense.")]  # the toy defense has its own keys
    settings = [*world_keys, "defense.sft.epochs=0.1", "defense.toy-scale.strength=0.9"]
    result = run(load_run_config(None, settings, defense="sft+toy-scale"), progress=False)
    assert result["defense"] == "sft+toy-scale" and result["defense_config"]["toy-scale"] == {"strength": 0.9}
