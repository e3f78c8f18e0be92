"""Offline bundles for Kaggle code competitions: cvtool, its runtime wheels and models in one folder.

`bundle(models, out_dir)` writes

    out_dir/wheels/     cvtool's wheel and its runtime dependencies (no PyTorch) for the target
    out_dir/models/     the models, each checked first: it opens in ONNX Runtime and carries a card
    out_dir/README.md   the notebook cells: pip install --no-index …, cvtool predict …, Predictor
    out_dir/bundle.json the manifest: versions, target, every wheel and model with its SHA-256

Everything is written into a hidden sibling folder that is renamed to out_dir at the end, so a
failed or interrupted bundle leaves nothing half written (and a replaced one stays until then).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cvtool.atomic import atomic_write_text
from cvtool.bundle.readme import render_readme
from cvtool.bundle.wheels import (
    DEFAULT_PLATFORM,
    ORT_CPU,
    ORT_GPU,
    BundleError,
    Target,
    cpu_wheel,
    cvtool_wheel,
    download_wheels,
    runtime_requirements,
    wheel_metadata,
)

__all__ = [
    "DEFAULT_PLATFORM",
    "BundleError",
    "BundleFile",
    "BundleResult",
    "Target",
    "bundle",
    "check_models",
]


@dataclass(frozen=True)
class BundleFile:
    """A file in the bundle: its path under the bundle folder, SHA-256 and size."""

    file: str
    sha256: str
    size: int
    classes: tuple[str, ...] = ()  # a model's card's class names


@dataclass
class BundleResult:
    """What `bundle` wrote: the target, cvtool's version and requirements, the files with digests."""

    out_dir: Path
    target: Target
    cpu: bool
    cvtool_version: str
    requirements: list[str]
    wheels: list[BundleFile] = field(default_factory=list)
    models: list[BundleFile] = field(default_factory=list)

    @property
    def ort_package(self) -> str:
        """The ONNX Runtime package bundled: onnxruntime-gpu, or onnxruntime (--cpu, or by the target)."""
        from packaging.requirements import Requirement
        from packaging.utils import canonicalize_name

        names = {canonicalize_name(Requirement(r).name) for r in self.requirements}
        return ORT_GPU if ORT_GPU in names else ORT_CPU

    @property
    def wheels_bytes(self) -> int:
        return sum(w.size for w in self.wheels)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_models(models: Sequence[Path]) -> list[tuple[Path, tuple[str, ...]]]:
    """(path, class names) per model; BundleError for a duplicate name, an unloadable or card-less file."""
    from cvtool.infer.session import open_model

    if not models:
        raise BundleError("no model given")
    seen: dict[str, Path] = {}
    checked = []
    for path in map(Path, models):
        if path.name in seen:
            first = seen[path.name]
            what = (
                "given twice" if first.resolve() == path.resolve() else f"has the same file name as {first}"
            )
            raise BundleError(f"{path}: {what} (models/ keeps one file per name; rename one)")
        seen[path.name] = path
        m = open_model(path, device="cpu")  # ModelError: missing, not ONNX, card vs graph
        if not m.has_card:
            raise BundleError(
                f"{path}: carries no cvtool card, so predict could not read it without flags; write one "
                f"first: cvtool card set {path} --classes … --size … --mean … --std …"
            )
        checked.append((path, m.card.class_names))
    return checked


def _check_out_dir(out_dir: Path, force: bool, models: Sequence[Path]) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise BundleError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise BundleError(f"{out_dir}: folder is not empty; pass --force to replace it")
        inside = [m for m in models if Path(m).resolve().is_relative_to(out_dir.resolve())]
        if inside:
            raise BundleError(f"{inside[0]}: lies in {out_dir}, which --force would replace; move it first")


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Rename tmp to out_dir; an existing out_dir is moved aside first and removed last."""
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    old = out_dir.with_name(f".{out_dir.name}.{secrets.token_hex(4)}.old")
    os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _write_manifest(r: BundleResult, path: Path) -> None:
    def files(items: list[BundleFile], with_classes: bool) -> list[dict]:
        rows = []
        for f in items:
            row: dict = {"file": f.file, "sha256": f.sha256, "size": f.size}
            if with_classes:
                row["classes"] = list(f.classes)
            rows.append(row)
        return rows

    manifest = {
        "cvtool_version": r.cvtool_version,
        "python": r.target.python,
        "platform": r.target.platform,
        "cpu": r.cpu,
        "onnxruntime": r.ort_package,
        "requirements": r.requirements,
        "wheels": files(r.wheels, False),
        "models": files(r.models, True),
    }
    atomic_write_text(path, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")


def bundle(
    models: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    python: str | None = None,
    platform: str = DEFAULT_PLATFORM,
    cpu: bool = False,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> BundleResult:
    """Write an offline bundle of cvtool and `models` into `out_dir` (see the module docstring).

    `python` (X.Y, default the running one) and `platform` (a wheel tag) name the machine that will
    install it; `cpu` bundles onnxruntime instead of onnxruntime-gpu. A non-empty out_dir is refused
    unless `force`, which replaces it once the new bundle is complete.
    """
    say = log or (lambda _msg: None)
    target = Target(python, platform) if python else Target.running(platform)
    out = Path(out_dir)
    paths = [Path(m) for m in models]
    _check_out_dir(out, force, paths)
    checked = check_models(paths)
    env = target.environment()
    if env["sys_platform"] != sys.platform or target.python != Target.running().python:
        say(
            f"note: pip resolves the dependencies' own markers for this machine ({sys.platform}, Python "
            f"{Target.running().python}), not the target; build on the target's system to be exact"
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.partial")
    tmp.mkdir()  # mode from the umask, as a plain mkdir gives
    try:
        wheels_dir = tmp / "wheels"
        wheels_dir.mkdir()
        say("preparing the cvtool wheel …")
        built = cvtool_wheel(tmp / "build")
        wheel = cpu_wheel(built, wheels_dir) if cpu else Path(shutil.move(built, wheels_dir / built.name))
        version, requires = wheel_metadata(wheel)
        shutil.rmtree(tmp / "build")
        requirements = runtime_requirements(target, cpu, requires)
        say(
            f"downloading wheels for CPython {target.python} on {target.platform}: " + ", ".join(requirements)
        )
        download_wheels(requirements, target, wheels_dir)
        result = BundleResult(out, target, cpu, version, requirements)
        result.wheels = [
            BundleFile(f"wheels/{w.name}", _sha256(w), w.stat().st_size)
            for w in sorted(wheels_dir.glob("*.whl"))
        ]
        (tmp / "models").mkdir()
        for path, classes in checked:
            dst = tmp / "models" / path.name
            shutil.copyfile(path, dst)
            result.models.append(BundleFile(f"models/{path.name}", _sha256(dst), dst.stat().st_size, classes))
        readme = render_readme(
            out.resolve().name,
            version,
            target.python,
            target.platform,
            result.ort_package,
            [(Path(m.file).name, m.classes) for m in result.models],
            len(result.wheels),
            result.wheels_bytes,
        )
        atomic_write_text(tmp / "README.md", readme)
        _write_manifest(result, tmp / "bundle.json")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result
