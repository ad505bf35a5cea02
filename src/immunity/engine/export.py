"""Write a stage's model as a Hugging Face directory anyone can load without `immunity`:
safetensors weights (adapters merged, or the PEFT adapter alone), tokenizer, generation config,
a README.md model card and immunity.json (the full provenance, machine-readable)."""

from __future__ import annotations

import inspect
import json
from datetime import UTC, datetime
from pathlib import Path

from peft import PeftModel

from ..models import merge_lora
from ..outputs import directory_in_place
from ..registry import DEFENSES


def paper_line(defense: str) -> str:
    """The first paragraph of a defense's module docstring: its name and paper (of each, in a
    composition)."""
    lines = []
    for name in defense.split("+"):
        module = inspect.getmodule(DEFENSES[name])
        lines.append(" ".join((module.__doc__ or name).strip().split("\n\n")[0].split()))
    return " Then ".join(lines)


def _table(settings: dict, header: str = "| setting | value |") -> str:
    rows = "\n".join(f"| `{k}` | `{json.dumps(v)}` |" for k, v in settings.items())
    return header + "\n|---|---|\n" + rows


def model_card(provenance: dict) -> str:
    """README.md for a released model: what produced it, with every setting and data hash."""
    stage, defense = provenance["stage"], provenance.get("defense")
    title = f"{defense}-immunized model" if stage == "defend" else f"{stage} output"
    lines = [
        "---",
        "library_name: transformers",
        f"base_model: {provenance['model']}",
        f"tags: [immunity, {stage}{', ' + defense if defense else ''}]",
        "---",
        "",
        f"# {title}",
        "",
        f"Made by `immunity {provenance['command']}` on {provenance['created']}, "
        f"from `{provenance['model']}` (weights sha256 prefix `{provenance.get('model_weights', 'n/a')}`), "
        f"seed {provenance['seed']}.",
        "",
    ]
    if defense:
        lines += [
            "## Method",
            "",
            paper_line(defense),
            "",
            f"Stage: {provenance['defense_stage']}.",
            "",
            "### Settings",
            "",
            _table(provenance["defense_config"]),
            "",
        ]
    if provenance.get("attack_config"):
        lines += ["## Attack", "", _table(provenance["attack_config"]), ""]
    lines += [
        "## Data",
        "",
        f"Sources: `{provenance['data']}`.",
        "",
        _table(provenance["data_hashes"], "| role/split | content hash |") if provenance["data_hashes"] else "",
        "",
    ]
    if provenance.get("evaluation"):
        lines += [
            "## Evaluation",
            "",
            f"Judge: `{provenance['evaluation'].get('judge')}`.",
            "",
            _table({k: v for k, v in provenance["evaluation"].items() if k != "judge"}),
            "",
        ]
    lines += [
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'model = AutoModelForCausalLM.from_pretrained("{provenance["out"]}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{provenance["out"]}")',
        "```",
        "",
        "## Reproduce",
        "",
        "Package versions: "
        + ", ".join(f"{k} {v}" for k, v in provenance["versions"].items())
        + f"; immunity code version `{provenance['code_version']}`. The full provenance is in `immunity.json`.",
        "",
        "Immunization makes harmful fine-tuning harder, not impossible: check the worst case over the "
        "attacks you care about before relying on it.",
        "",
    ]
    return "\n".join(lines)


def write_release(
    model, tokenizer, out: Path, provenance: dict, adapter_only: bool = False, overwrite: bool = False
) -> Path:
    """Save `model` (merged unless `adapter_only`), its tokenizer, README.md and immunity.json
    into `out`, through a uniquely named temporary directory renamed into place (`outputs`):
    a non-empty `out` is replaced only with `overwrite`, and a concurrent writer's is never merged."""
    out = Path(out).expanduser()
    if adapter_only and not isinstance(model, PeftModel):
        raise ValueError("--adapter-only needs a LoRA stage (mode=lora); this model has no adapter")
    with directory_in_place(out, overwrite) as tmp:
        if adapter_only:
            model.save_pretrained(tmp, safe_serialization=True)
        else:
            merge_lora(model).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        provenance = provenance | {
            "out": str(out),
            "adapter_only": adapter_only,
            "created": provenance.get("created") or datetime.now(UTC).isoformat(),
        }
        (tmp / "immunity.json").write_text(json.dumps(provenance, indent=1, default=str))
        (tmp / "README.md").write_text(model_card(provenance))
    return out
