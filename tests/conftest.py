import pytest

from immunity.world import SafetyWorld, WorldConfig

# A SafetyWorld small enough to pretrain, align and attack in seconds.
TINY = [
    "world.model.hidden=32", "world.model.layers=2", "world.model.heads=2", "world.model.intermediate=64",
    "world.pretrain.epochs=0.05", "defense.epochs=0.1", "attack.n=48", "attack.epochs=1",
    "attack.batch_size=16", "eval.max_prompts=24", "eval.max_new_tokens=24",
]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets an empty model cache: no test depends on an earlier run."""
    monkeypatch.setenv("IMMUNITY_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def world():
    return SafetyWorld(WorldConfig(), progress=False)


@pytest.fixture
def tiny():
    return list(TINY)


@pytest.fixture
def tiny_architecture(world, tmp_path, tiny):
    """make(arch) -> overrides that run the pipeline on a tiny random `arch` model saved locally."""
    from immunity.models import build_model

    def make(arch: str) -> list[str]:
        path = tmp_path / arch
        model = build_model(arch, len(world.tokenizer), hidden=32, layers=3, heads=2, intermediate=64,
                            max_positions=64, seed=0, tokenizer=world.tokenizer)
        model.save_pretrained(path, safe_serialization=True)
        world.tokenizer.save_pretrained(path)
        return [o for o in tiny if not o.startswith("defense.")] + [f"model={path}", "eval.max_prompts=8"]

    return make
