import os
import tempfile

import pytest
import torch
from real_fixtures import files  # noqa: F401  (a tiny real-format model and data files, shared)

from immunity.data import collate, encode_chat
from immunity.models import build_model
from immunity.safetyworld import SafetyWorld
from immunity.world import WorldConfig, complied

# A SafetyWorld small enough to pretrain, align and attack in seconds.
TINY = [
    "world.model.hidden=32",
    "world.model.layers=2",
    "world.model.heads=2",
    "world.model.intermediate=64",
    "world.pretrain.epochs=0.05",
    "defense.epochs=0.1",
    "attack.n=48",
    "attack.epochs=1",
    "attack.batch_size=16",
    "eval.max_prompts=24",
    "eval.max_new_tokens=24",
]


def pytest_configure(config):
    """Nothing a test does is written outside a temporary directory: a session's model cache is
    its own (each test then gets an empty one, `isolated_cache`)."""
    os.environ["IMMUNITY_CACHE"] = tempfile.mkdtemp(prefix="immunity-tests-")


def pytest_addoption(parser):
    parser.addoption("--repin", action="store_true", help="print new pinned loss trajectories")


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
def tiny_model(world):
    """tiny_model(arch, dtype, layers, seed): a random model with the world's vocabulary. GPT-2
    stays float64 end to end (LlamaRMSNorm computes in float32), so exactness tests use it."""

    def make(arch: str = "gpt2", dtype=torch.float64, layers: int = 3, seed: int = 0):
        model = build_model(
            arch,
            len(world.tokenizer),
            hidden=32,
            layers=layers,
            heads=2,
            intermediate=64,
            max_positions=64,
            seed=seed,
            tokenizer=world.tokenizer,
        )
        return model.to(dtype)

    return make


@pytest.fixture
def batch_of(world):
    """batch_of(examples): one padded batch with answer-only labels."""

    def make(examples):
        return collate(
            [encode_chat(world.tokenizer, e.prompt, e.answer) for e in examples], world.tokenizer.pad_token_id
        )

    return make


@pytest.fixture
def harmful_batch(world, batch_of):
    """harmful_batch(start, n): the defender's harmful requests answered compliantly."""
    return lambda start=0, n=4: batch_of(
        [complied(world.lexicon, e) for e in world.data.harmful["align"][start : start + n]]
    )


@pytest.fixture
def align_batch(world, batch_of):
    """align_batch(start, n): n refusals and n helpful answers (the alignment data)."""
    return lambda start=0, n=4: batch_of(
        world.data.harmful["align"][start : start + n] + world.data.benign["align"][start : start + n]
    )


@pytest.fixture
def tiny_architecture(world, tmp_path, tiny, tiny_model):
    """make(arch) -> overrides that run the pipeline on a tiny random `arch` model saved locally."""

    def make(arch: str) -> list[str]:
        path = tmp_path / arch
        tiny_model(arch, torch.float32).save_pretrained(path, safe_serialization=True)
        world.tokenizer.save_pretrained(path)
        return [o for o in tiny if not o.startswith("defense.")] + [f"model={path}", "eval.max_prompts=8"]

    return make
