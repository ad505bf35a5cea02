"""Data sources: the field's datasets, read from the user's files or (only when named) the hub,
turned into a data bundle on disjoint, deduplicated, seeded splits.

    SOURCE = [SPLIT=]KIND[@HUB_SPLIT][:PATH][#FIELD=COLUMN,...]

KIND is one of `KINDS` below; PATH a local `.json`, `.jsonl`, `.jsonl.gz`, `.csv`, `.parquet` file
or a `datasets` directory (`save_to_disk`); without PATH the kind's hub dataset is downloaded
through `datasets`, because the user named it (`@HUB_SPLIT` picks another of its splits, e.g.
`eval=beavertails@30k_test`). SPLIT (align | attack | val | eval) sends every
row of the source to that split; without it a source's rows are divided over the splits its
roles use. `#FIELD=COLUMN` renames columns (`#prompt=question,answer=response`); the generic
`jsonl` and `csv` kinds also take `as=ROLE` (harmful | refusals | benign | task) and, for a
task, `label=COLUMN` and `judge=classification|number`. Any harmful-prompt source takes
`as=heldout`: its requests become a held-out benchmark on the eval split, judged as `hs_heldout`
and never trained on (`eval=harmbench:FILE#as=heldout` beside AdvBench).

Each kind's schema (the columns it reads) and the roles it fills:
    beavertails  prompt, response, is_safe, [category]  -> harmful (is_safe false), refusals (is_safe true)
    refusals     prompt, response, refusal               -> harmful and refusals, paired by prompt
                 (RepNoise's / Booster's `beavertails_with_refusals_train.json`)
    advbench     goal, [target]                          -> harmful (target as the answer; without it,
                                                            prompts only: `immunity prepare advbench`)
    donotanswer  prompt, [risk_area]                     -> harmful prompts (no answers; `immunity prepare
                                                            donotanswer`)
    harmbench    Behavior, [SemanticCategory]            -> harmful prompts (no answers)
    sst2         sentence, label (0/1 or name)           -> task "sst2"
    agnews       text, label (0-3 or name)               -> task "agnews"
    gsm8k        question, answer ("... #### 42")        -> task "gsm8k" (final-number accuracy)
    alpaca       instruction, [input], output            -> benign
    sums         (generated, no file)                    -> task "sums": "What is 47 + 38?", exact answer
    word-problems (generated, no file)                   -> benign one-step word problems, exact answer
    capitals     (generated, no file)                    -> benign "What is the capital of X?", exact answer
Harmful prompts without answers get the unaligned base model's own answers, and refusals a fixed
refusal sentence, where a run needs them (`bench.answers`).
"""

from __future__ import annotations

import csv
import gzip
import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import cast

from ..world import Example
from .bundle import DataBundle

SPLITS = ("align", "attack", "val", "eval")
# How a source's unique prompts are divided when no split is named, per role.
FRACTIONS = {
    "harmful": {"align": 0.3, "attack": 0.3, "val": 0.1, "eval": 0.3},
    "refusals": {"align": 0.7, "val": 0.1, "eval": 0.2},
    "benign": {"align": 0.7, "val": 0.1, "eval": 0.2},
    "task": {"attack": 0.7, "val": 0.1, "eval": 0.2},
    "heldout": {"eval": 1.0},  # a held-out benchmark (`#as=heldout`) is never used for any choice
}
SST2_PROMPT = "Analyze the sentiment of the input, and respond only positive or negative.\nInput: {}"
AGNEWS_PROMPT = (
    "Categorize the news article into one of the 4 categories: World, Sports, Business, Sci/Tech.\nInput: {}"
)
AGNEWS_LABELS = ("World", "Sports", "Business", "Sci/Tech")


class DataError(ValueError):
    pass


@dataclass(frozen=True)
class Row:
    """One adapted row: its role and example (a paired kind gives two rows per source row)."""

    role: str
    example: Example


@dataclass(frozen=True)
class Kind:
    required: tuple[str, ...]
    adapt: Callable[[dict, dict], list[Row]]  # (row, options) -> rows
    hub: tuple[str, str | None, str] | None = None  # (dataset id, config, split) for a bare KIND
    task: bool = False
    hub_fields: tuple[tuple[str, str], ...] = ()  # (our field, the hub dataset's column) where they differ
    generated: str = ""  # a generated kind (`data.exact`): no file, no hub


def _truthy(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "safe")
    return bool(value)


def _category(value) -> str:
    if isinstance(value, dict):  # BeaverTails: {"animal_abuse": false, ...}
        return next((k for k, v in value.items() if v), "")
    return str(value or "")


def _beavertails(row, _):
    example = Example(row["prompt"], row["response"], "harmful", _category(row.get("category")))
    return [Row("refusals" if _truthy(row["is_safe"]) else "harmful", example)]


def _refusals(row, _):
    return [
        Row("harmful", Example(row["prompt"], row["response"], "harmful")),
        Row("refusals", Example(row["prompt"], row["refusal"], "harmful")),
    ]


def _label(value, names: tuple[str, ...], field_name: str) -> str:
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.strip().isdigit()):
        index = int(value)
        if not 0 <= index < len(names):
            raise KeyError(f"{field_name} {value!r} is not one of 0..{len(names) - 1}")
        return names[index]
    if str(value) not in names:
        raise KeyError(f"{field_name} {value!r} is not one of {', '.join(names)}")
    return str(value)


def _classification(template: str, text_field: str, names: tuple[str, ...]):
    def adapt(row, _):
        label = _label(row["label"], names, "label")
        return [Row("task", Example(template.format(row[text_field]), label, "classification", label))]

    return adapt


def final_number(text: str) -> str:
    """The number after '####' (GSM8K), else the last number in the text; '' if none."""
    import re

    tail = text.split("####")[-1] if "####" in text else text
    numbers = re.findall(r"-?\d[\d,]*\.?\d*", tail)
    return numbers[-1].replace(",", "").rstrip(".") if numbers else ""


def _gsm8k(row, _):
    return [Row("task", Example(row["question"], row["answer"], "number", final_number(row["answer"])))]


def _alpaca(row, _):
    prompt = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
    return [Row("benign", Example(prompt, row["output"], "benign"))]


def _generic(row, options):
    role = options.get("as", "")
    if role == "heldout":
        role = "harmful"  # made held-out by `read_rows`
    if role not in ("harmful", "refusals", "benign", "task"):
        raise KeyError("as=ROLE must be given: harmful | refusals | benign | task | heldout")
    if role == "task":
        label = str(row[options.get("label", "answer")])
        return [
            Row("task", Example(row["prompt"], row.get("answer", label), options.get("judge", "classification"), label))
        ]
    return [Row(role, Example(row["prompt"], str(row.get("answer", "")), "benign" if role == "benign" else "harmful"))]


KINDS: dict[str, Kind] = {
    "beavertails": Kind(
        ("prompt", "response", "is_safe"), _beavertails, ("PKU-Alignment/BeaverTails", None, "30k_train")
    ),
    "refusals": Kind(("prompt", "response", "refusal"), _refusals),
    "advbench": Kind(
        ("goal",),
        lambda r, _: [
            Row("harmful", Example(r["goal"], r.get("target") or "", "harmful", str(r.get("category") or "")))
        ],
        ("walledai/AdvBench", None, "train"),
        hub_fields=(("goal", "prompt"),),
    ),
    "donotanswer": Kind(
        ("prompt",), lambda r, _: [Row("harmful", Example(r["prompt"], "", "harmful", str(r.get("risk_area") or "")))]
    ),
    "harmbench": Kind(
        ("Behavior",),
        lambda r, _: [Row("harmful", Example(r["Behavior"], "", "harmful", str(r.get("SemanticCategory", ""))))],
    ),
    "sst2": Kind(
        ("sentence", "label"),
        _classification(SST2_PROMPT, "sentence", ("negative", "positive")),
        ("stanfordnlp/sst2", None, "train"),
        task=True,
    ),
    "agnews": Kind(
        ("text", "label"),
        _classification(AGNEWS_PROMPT, "text", AGNEWS_LABELS),
        ("fancyzhx/ag_news", None, "train"),
        task=True,
    ),
    "gsm8k": Kind(("question", "answer"), _gsm8k, ("openai/gsm8k", "main", "train"), task=True),
    "alpaca": Kind(("instruction", "output"), _alpaca, ("tatsu-lab/alpaca", None, "train")),
    "sums": Kind((), lambda r, _: [Row("task", r["example"])], task=True, generated="sums"),
    "word-problems": Kind((), lambda r, _: [Row("benign", r["example"])], generated="word-problems"),
    "capitals": Kind((), lambda r, _: [Row("benign", r["example"])], generated="capitals"),
    "jsonl": Kind(("prompt",), _generic),
    "csv": Kind(("prompt",), _generic),
}


@dataclass(frozen=True)
class SourceSpec:
    kind: str
    path: str | None = None
    split: str | None = None
    options: dict = field(default_factory=dict)  # column renames, and as= / label= / judge=
    hub_split: str | None = None

    @property
    def task(self) -> bool:
        return KINDS[self.kind].task or self.options.get("as") == "task"

    def __str__(self) -> str:
        hub = f"@{self.hub_split}" if self.hub_split else ""
        return f"{self.split + '=' if self.split else ''}{self.kind}{hub}{':' + self.path if self.path else ''}"


def parse_source(text: str) -> SourceSpec:
    """`[SPLIT=]KIND[:PATH][#FIELD=COLUMN,...]`, checked: known kind, split, existing path."""
    spec, _, options_text = text.partition("#")
    split = None
    if "=" in spec.split(":", 1)[0]:
        split, spec = spec.split("=", 1)
        if split not in SPLITS:
            raise DataError(f"data source {text!r}: unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    kind, _, path = spec.partition(":")
    kind, _, hub_split = kind.partition("@")
    if kind not in KINDS:
        import difflib

        close = difflib.get_close_matches(kind, KINDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise DataError(f"data source {text!r}: unknown kind {kind!r}{hint} (known: {', '.join(KINDS)})")
    options = {}
    for item in filter(None, options_text.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise DataError(f"data source {text!r}: option {item!r} is not FIELD=COLUMN")
        options[key.strip()] = value.strip()
    if path:
        path = str(Path(path).expanduser())
        if not Path(path).exists():
            raise DataError(f"data source {text!r}: {path} does not exist")
    elif KINDS[kind].generated:
        pass
    elif KINDS[kind].hub is None:
        raise DataError(f"data source {text!r}: the {kind} kind needs a local file (KIND:PATH)")
    if hub_split and path:
        raise DataError(f"data source {text!r}: @HUB_SPLIT goes with a hub dataset, not a file")
    return SourceSpec(kind, path or None, split, options, hub_split or None)


# -- reading --------------------------------------------------------------------------------
def _read_file(path: Path) -> Iterable[dict]:
    name = path.name.lower()
    if path.is_dir():
        from datasets import load_from_disk  # optional extra `data`

        dataset = load_from_disk(str(path))
        if hasattr(dataset, "keys"):  # a DatasetDict: its first split
            dataset = dataset[next(iter(dataset.keys()))]
        return iter(dataset)
    if name.endswith(".parquet"):
        from datasets import load_dataset  # optional extra `data`

        return iter(load_dataset("parquet", data_files=str(path), split="train"))
    if name.endswith(".csv"):
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle))
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt") as handle:
        if name.endswith((".jsonl", ".jsonl.gz")):
            rows = []
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise DataError(f"{path}: line {number}: not valid JSON ({err.msg})") from err
            return rows
        if name.endswith(".json"):
            try:
                loaded = json.load(handle)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from err
            if isinstance(loaded, dict):  # {"data": [...]} or {"train": [...]}
                loaded = next((v for v in loaded.values() if isinstance(v, list)), None)
            if not isinstance(loaded, list):
                raise DataError(f"{path}: expected a list of objects")
            return loaded
    raise DataError(f"{path}: unknown format; use .json, .jsonl, .jsonl.gz, .csv, .parquet or a datasets directory")


def _generate(spec: SourceSpec) -> Iterable[dict]:
    """A generated kind's items (`#n=COUNT`, default 1000; `#seed=S`, default 0)."""
    from .exact import generated

    try:
        count, seed = int(spec.options.get("n", 1000)), int(spec.options.get("seed", 0))
    except ValueError as err:
        raise DataError(f"data source {spec}: n and seed must be integers") from err
    return [{"example": e} for e in generated(KINDS[spec.kind].generated, count, seed)]


def _read_hub(spec: SourceSpec) -> Iterable[dict]:
    from datasets import load_dataset  # downloads: the user named the dataset

    dataset_id, config, split = cast(tuple[str, str | None, str], KINDS[spec.kind].hub)
    return iter(load_dataset(dataset_id, config, split=spec.hub_split or split))


def read_rows(spec: SourceSpec) -> list[Row]:
    """Every row of a source, adapted, or one clear error naming the file, row and field."""
    kind = KINDS[spec.kind]
    renames = (dict(kind.hub_fields) if not spec.path else {}) | {
        k: v for k, v in spec.options.items() if k not in ("as", "label", "judge", "n", "seed")
    }
    where = spec.path or (f"generated {spec.kind}" if kind.generated else f"hub dataset {cast(tuple, kind.hub)[0]}")
    raw = _read_file(Path(spec.path)) if spec.path else _generate(spec) if kind.generated else _read_hub(spec)
    rows = []
    for number, row in enumerate(raw, 1):
        if not isinstance(row, dict):
            raise DataError(f"{where}: row {number}: expected an object with fields {', '.join(kind.required)}")
        row = {**row, **{field_name: row.get(column) for field_name, column in renames.items() if column in row}}
        missing = [f for f in kind.required if row.get(f) in (None, "")]
        if missing:
            raise DataError(
                f"{where}: row {number}: missing field {missing[0]!r} ({spec.kind} needs {', '.join(kind.required)})"
            )
        try:
            rows += kind.adapt(row, spec.options)
        except KeyError as err:
            raise DataError(f"{where}: row {number}: {err.args[0]}") from err
    if spec.options.get("as") == "heldout" and not spec.task:
        rows = _as_heldout(rows, where)
    if not rows:
        raise DataError(f"{where}: no rows")
    return rows


def _as_heldout(rows: list[Row], where: str) -> list[Row]:
    """A harmful-prompt source as a held-out benchmark (`#as=heldout`, e.g. HarmBench beside
    AdvBench): its requests are only judged (`hs_heldout`), never trained on or answered."""
    if any(r.role != "harmful" for r in rows if r.role != "refusals"):
        raise DataError(f"{where}: as=heldout takes harmful requests only")
    return [Row("heldout", replace(r.example, answer="")) for r in rows if r.role == "harmful"]


# -- splitting ------------------------------------------------------------------------------
def _divide(prompts: list[str], fractions: dict[str, float], rng: random.Random) -> dict[str, str]:
    """prompt -> split, by fractions over a seeded shuffle of the unique prompts."""
    order = list(prompts)
    rng.shuffle(order)
    assignment, start = {}, 0
    names = list(fractions)
    for i, name in enumerate(names):
        count = len(order) - start if i == len(names) - 1 else round(fractions[name] * len(order))
        for prompt in order[start : start + count]:
            assignment[prompt] = name
        start += count
    return assignment


def build_bundle(sources: list[str], task: str | None, seed: int) -> DataBundle:
    """The bundle of the given sources (and fine-tuning task source), splits disjoint by prompt.

    Within a source every prompt goes to one split, whatever roles its rows play (BeaverTails
    answers one prompt both safely and unsafely); rows are deduplicated by (role, prompt).
    """
    specs = [parse_source(s) for s in sources] + ([parse_source(task)] if task else [])
    placed: dict[tuple[str, str], list[Example]] = {}
    for spec in specs:
        rows, seen = [], set()
        for row in read_rows(spec):
            if (row.role, row.example.prompt) not in seen:
                seen.add((row.role, row.example.prompt))
                rows.append(row)
        roles = {r.role for r in rows}
        if spec.task != (roles == {"task"}):
            raise DataError(f"{spec}: a task kind (sst2, agnews, gsm8k, or as=task) goes in --task, and only there")
        primary = "harmful" if "harmful" in roles else sorted(roles)[0]
        fractions = {spec.split: 1.0} if spec.split else FRACTIONS[primary]
        prompts = list(dict.fromkeys(r.example.prompt for r in rows))
        assignment = _divide(prompts, fractions, random.Random(f"{seed}:{spec}"))
        for r in rows:
            role = f"task:{_task_name(spec)}" if r.role == "task" else r.role
            placed.setdefault((role, assignment[r.example.prompt]), []).append(r.example)
    _make_disjoint(placed)
    bundle = DataBundle(name="+".join(str(s) for s in specs))
    for (role, split), examples in placed.items():
        if role.startswith("task:"):
            bundle.tasks.setdefault(role.split(":", 1)[1], {})[split] = examples
        else:
            getattr(bundle, role)[split] = examples
    return bundle


def _task_name(spec: SourceSpec) -> str:
    return spec.kind if KINDS[spec.kind].task else "task"


def _make_disjoint(placed: dict[tuple[str, str], list[Example]]) -> None:
    """No prompt of a val or eval split is trained on: drop it from align and attack splits."""
    held = {e.prompt for (role, split), ex in placed.items() if split in ("val", "eval") for e in ex}
    evaluated = {e.prompt for (role, split), ex in placed.items() if split == "eval" for e in ex}
    for (_role, split), examples in placed.items():
        if split in ("align", "attack"):
            examples[:] = [e for e in examples if e.prompt not in held]
        elif split == "val":
            examples[:] = [e for e in examples if e.prompt not in evaluated]


@lru_cache(maxsize=4)
def cached_bundle(sources: tuple[str, ...], task: str | None, seed: int) -> DataBundle:
    """`build_bundle`, read once per process (validation and the run share it)."""
    return build_bundle(list(sources), task, seed)
