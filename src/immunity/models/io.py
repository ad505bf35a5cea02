"""Copy and save models. Saving is atomic: a reader never sees a half-written directory."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..outputs import WRITING, clean_leftovers, sibling_prefix


def clone_model(model):
    """An independent copy (defenses and attacks must not touch a cached model)."""
    parameter = next(model.parameters())
    copy = type(model)(model.config).to(parameter.dtype)  # keep the precision (bf16 stays bf16)
    copy.load_state_dict(model.state_dict())
    copy.generation_config = model.generation_config
    return copy.to(parameter.device).eval()


def save_model(model, path: Path, tokenizer=None, before_rename: Callable[[Path], None] | None = None) -> None:
    """Write `model` (and `tokenizer`) to a temporary directory unique to this writer, then rename
    it into place (`before_rename(tmp)` may add files first). If `path` appeared meanwhile
    (another writer won), keep theirs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(path.parent)  # what killed writers left
    tmp = Path(tempfile.mkdtemp(prefix=sibling_prefix(path), suffix=WRITING, dir=path.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if before_rename is not None:
            before_rename(tmp)
        os.rename(tmp, path)
    except OSError:
        if not path.exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
