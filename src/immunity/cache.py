"""Content keys and the on-disk model cache.

- `stable_hash`: a short hash of any JSON-able value (dataclasses included).
- `code_version(module)`: a hash of the package modules `module` depends on (itself and, found
  by reading import statements, everything it imports from the package, transitively). It is
  taken from each file's syntax tree without docstrings and without what only a type checker
  reads (annotations, `if TYPE_CHECKING:` blocks, `typing.cast`, imports from `typing`), so
  editing a comment, a docstring or a type does not invalidate results, and it is computed once
  per process, from the code that was loaded, not re-read when a result is saved.
- `cached_model(key, build)`: build a model once per key, even with several processes asking
  at once; entries are written atomically and verified when read.
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

if TYPE_CHECKING:
    T = TypeVar("T")  # what a cache entry holds

from .outputs import process_alive

PACKAGE_ROOT = Path(__file__).resolve().parent
PACKAGE = PACKAGE_ROOT.name
# Imported only to register every built-in; a run executes the ones it looks up, which the
# caller names explicitly (see `bench.pipeline.run_code_version`).
REGISTRATION_ONLY = {f"{PACKAGE}.builtins"}


def cache_root() -> Path:
    return Path(os.environ.get("IMMUNITY_CACHE", Path.home() / ".cache" / "immunity")).expanduser()


def _canonical(obj):
    if is_dataclass(obj) and not isinstance(obj, type):
        obj = asdict(obj)
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, float) and obj.is_integer():
        return int(obj)  # 5 and 5.0 are one value
    return obj


def stable_hash(obj) -> str:
    return hashlib.sha256(json.dumps(_canonical(obj), sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- code versions ---------------------------------------------------------------------------
def _module_path(dotted: str) -> Path | None:
    """File of a package module given as 'immunity.x.y' (a package means its __init__.py)."""
    parts = dotted.split(".")[1:]
    base = PACKAGE_ROOT.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    parts = current.split(".")
    parts = parts if is_package else parts[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(getattr(body[0], "value", None), ast.Constant)
                and isinstance(cast(ast.Constant, cast(ast.Expr, body[0]).value).value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
    return tree


TYPING_MODULES = {"typing", "collections.abc", "__future__", "typing_extensions"}


class _WithoutTypes(ast.NodeTransformer):
    """Removes what only a type checker reads. An annotated assignment becomes a plain one (or
    nothing, without a value), except in a class body, where it stays a (typeless) annotation: it
    makes a dataclass field, which is behaviour."""

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        for statement in node.body:
            if isinstance(statement, ast.AnnAssign):
                statement.annotation = ast.Name("_", ast.Load())
                statement.simple = -1  # a field: kept by visit_AnnAssign
        return self.generic_visit(node)

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.annotation = None
        return node

    def _function(self, node):
        node.returns = None
        return self.generic_visit(node)

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST | None:
        if node.simple == -1:
            node.simple = 1
            return self.generic_visit(node)
        if node.value is None:
            return None
        return self.generic_visit(ast.Assign(targets=[node.target], value=node.value))

    def visit_If(self, node: ast.If):
        test = node.test
        name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else ""
        return node.orelse or None if name == "TYPE_CHECKING" else self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom):
        return None if node.module in TYPING_MODULES else node

    def visit_Call(self, node: ast.Call):
        self.generic_visit(node)
        func = node.func
        typing_cast = (isinstance(func, ast.Name) and func.id == "cast") or (
            isinstance(func, ast.Attribute) and func.attr == "cast" and getattr(func.value, "id", "") == "typing"
        )
        return node.args[1] if typing_cast and len(node.args) == 2 and not node.keywords else node


def _behaviour(tree: ast.Module) -> ast.Module:
    """The module's syntax tree without docstrings and type-only parts (what runs)."""
    return ast.fix_missing_locations(_WithoutTypes().visit(_without_docstrings(tree)))


def _source_of(module: str, name: str) -> str:
    """Where `from module import name` really comes from: the submodule `name`, the submodule a
    package's __init__ re-exports `name` from (followed through chains), or `module` itself."""
    if _module_path(f"{module}.{name}") is not None:
        return f"{module}.{name}"
    path = _module_path(module)
    if path is not None and path.name == "__init__.py":
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
                return _source_of(_resolve(module, True, node), name)
    return module


@cache
def _parsed(dotted: str) -> tuple[str, tuple[str, ...]]:
    """(digest of the module's code without docstrings, the package modules it imports)."""
    path = cast(Path, _module_path(dotted))
    tree = _behaviour(ast.parse(path.read_text()))
    deps: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _resolve(dotted, path.name == "__init__.py", node)
            deps.update(_source_of(target, a.name) for a in node.names)
        elif isinstance(node, ast.Import):
            deps.update(a.name for a in node.names)
    deps = {
        d
        for d in deps
        if d.split(".")[0] == PACKAGE and d != dotted and _module_path(d) is not None and d not in REGISTRATION_ONLY
    }
    digest = hashlib.sha256(ast.dump(tree).encode()).hexdigest()
    return digest, tuple(sorted(deps))


@cache
def dependencies(dotted: str) -> tuple[str, ...]:
    """`dotted` and every package module it imports, transitively."""
    seen, todo = set(), [dotted]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(_parsed(module)[1])
    return tuple(sorted(seen))


def snapshot_code() -> None:
    """Read every package module now (they have just been imported), so later code versions
    describe the code this process runs even if files change on disk meanwhile."""
    for path in PACKAGE_ROOT.rglob("*.py"):
        parts = path.relative_to(PACKAGE_ROOT).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        _parsed(".".join((PACKAGE, *parts)))


# Modules of settings, not code: a track's budgets reach a run through its resolved configuration
# (the config hash), so a changed budget re-identifies the runs on that track alone instead of
# staling every stored run's code version.
SETTINGS_MODULES = frozenset({"immunity.tracks"})


def code_version(*modules: str) -> str:
    """Hash of the code of `modules` and of everything they import from the package (settings
    modules apart: their values are part of each run's configuration)."""
    files = sorted(set().union(*(dependencies(m) for m in modules)) - SETTINGS_MODULES)
    return hashlib.sha256("".join(f"{m}:{_parsed(m)[0]};" for m in files).encode()).hexdigest()[:12]


# -- model cache -----------------------------------------------------------------------------
MANIFEST = "immunity-manifest.json"


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=16)
def _weights_digest(directory: str, stamp: tuple) -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(directory).glob("*.safetensors")):
        digest.update(path.name.encode())
        digest.update(_file_digest(path).encode())
    return digest.hexdigest()[:16]


def weights_digest(directory: Path) -> str:
    """A hash of a model directory's safetensors files (read once per process per file state)."""
    stamp = tuple(
        (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(Path(directory).glob("*.safetensors"))
    )
    return _weights_digest(str(directory), stamp)


def write_manifest(directory: Path) -> None:
    """Record every file's size and hash, so a truncated or altered entry is detected on read."""
    files = {
        p.name: {"bytes": p.stat().st_size, "sha256": _file_digest(p)}
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    (directory / MANIFEST).write_text(json.dumps(files, indent=1))


def entry_is_complete(directory: Path) -> bool:
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return False
    try:
        files = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return all(
        (directory / name).is_file()
        and (directory / name).stat().st_size == meta["bytes"]
        and _file_digest(directory / name) == meta["sha256"]
        for name, meta in files.items()
    )


INCOMPLETE = ".incomplete-"  # an entry found truncated, moved aside by process PID: `NAME.incomplete-PID`


def remove_incomplete(directory: Path) -> list[Path]:
    """Delete the entries in `directory` that a builder moved aside as incomplete, once that
    builder's process is gone (the entry is kept while it may still be inspected by it)."""
    removed = []
    for entry in directory.iterdir() if directory.is_dir() else []:
        name, sep, pid = entry.name.rpartition(INCOMPLETE)
        if sep and name and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


@contextmanager
def exclusive(lock_path: Path, waiting_message: str = ""):
    """An inter-process lock (flock) held for the duration of the block."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting_message:
                print(waiting_message, file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_model(path: Path, build: Callable[[], T], load: Callable[[Path], T], save: Callable[[T, Path], None]) -> T:
    """The model at cache entry `path`: loaded if complete; otherwise built by exactly one process
    (others wait on a lock, then load what it wrote) and saved atomically. An incomplete entry
    (truncated, or missing its manifest) is moved aside and rebuilt, never loaded."""
    if entry_is_complete(path):
        return load(path)
    with exclusive(path.with_name(path.name + ".lock"), f"immunity: waiting for another process to build {path.name}"):
        if entry_is_complete(path):
            return load(path)
        remove_incomplete(path.parent)  # what earlier, dead builders moved aside
        if path.exists():
            aside = path.with_name(f"{path.name}{INCOMPLETE}{os.getpid()}")
            print(
                f"immunity: cache entry {path.name} is incomplete; moved to {aside.name}, rebuilding",
                file=sys.stderr,
                flush=True,
            )
            os.rename(path, aside)
        print(f"immunity: building {path.name}", file=sys.stderr, flush=True)
        model = build()
        save(model, path)
        return model
