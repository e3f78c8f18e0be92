"""Wheels for another machine: the target's tags and markers, cvtool's wheel, `pip download`.

The target is a Python version and a wheel platform tag (Kaggle: CPython 3.11 on manylinux
x86_64). cvtool's own requirements (from its wheel's METADATA, markers evaluated for the target)
are handed to `pip download --only-binary=:all:`, which resolves their dependencies. pip itself
evaluates those dependencies' markers for the running machine, not the target: build a bundle on
the target's operating system (and best with its Python version) to be exact.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import json
import platform as _platform
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path
from urllib.parse import unquote, urlparse

from cvtool.errors import CvtoolError

__all__ = [
    "DEFAULT_PLATFORM",
    "BundleError",
    "Target",
    "cpu_wheel",
    "cvtool_wheel",
    "download_wheels",
    "pip_error",
    "runtime_requirements",
    "source_root",
    "wheel_metadata",
]

# ONNX Runtime ≥ 1.20 and numpy 2 publish x86_64 Linux wheels for glibc 2.27/2.28 only, so the
# older manylinux2014 (glibc 2.17) tag finds none; Kaggle's image has a newer glibc than 2.28.
DEFAULT_PLATFORM = "manylinux_2_28_x86_64"
ORT_GPU, ORT_CPU = "onnxruntime-gpu", "onnxruntime"

_LINUX = re.compile(r"^(?:manylinux_(\d+)_(\d+)|manylinux(1|2010|2014)|musllinux_(\d+)_(\d+)|linux)_(\w+)$")
_LEGACY_GLIBC = {"1": 5, "2010": 12, "2014": 17}
_WINDOWS = {"win32": "x86", "win_amd64": "AMD64", "win_arm64": "ARM64"}
# Lines of pip's output that mean the index could not be reached (DNS, proxy, TLS, no route).
_NETWORK = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ProxyError",
    "SSLError",
)


class BundleError(CvtoolError):
    """A bundle cannot be made (bad target, pip failed, an unusable model); the message says why."""


@dataclass(frozen=True)
class Target:
    """Where the bundle will be installed: CPython `python` (X.Y) on wheel platform `platform`."""

    python: str
    platform: str = DEFAULT_PLATFORM

    def __post_init__(self) -> None:
        if not re.fullmatch(r"3\.\d{1,2}", self.python):
            raise BundleError(f"--python takes a version X.Y such as 3.11, got {self.python!r}")
        self.environment()  # an unknown platform tag fails here, before anything is built

    @classmethod
    def running(cls, platform: str = DEFAULT_PLATFORM) -> Target:
        return cls(f"{sys.version_info.major}.{sys.version_info.minor}", platform)

    def environment(self) -> dict[str, str]:
        """The values PEP 508 markers see on the target."""
        tag = self.platform
        linux = _LINUX.match(tag)
        if linux:
            sys_platform, system, os_name, machine = "linux", "Linux", "posix", linux.group(6)
        elif tag in _WINDOWS:
            sys_platform, system, os_name, machine = "win32", "Windows", "nt", _WINDOWS[tag]
        elif re.fullmatch(r"macosx_\d+_\d+_\w+", tag):
            sys_platform, system, os_name, machine = "darwin", "Darwin", "posix", tag.split("_", 3)[3]
        else:
            raise BundleError(
                f"--platform: unknown wheel platform tag {tag!r} "
                "(e.g. manylinux_2_28_x86_64, manylinux_2_28_aarch64, win_amd64, macosx_11_0_arm64)"
            )
        running = f"{sys.version_info.major}.{sys.version_info.minor}"
        full = _platform.python_version() if self.python == running else f"{self.python}.0"
        return {
            "python_version": self.python,
            "python_full_version": full,
            "implementation_name": "cpython",
            "implementation_version": full,
            "platform_python_implementation": "CPython",
            "sys_platform": sys_platform,
            "platform_system": system,
            "os_name": os_name,
            "platform_machine": machine,
            "platform_release": "",
            "platform_version": "",
            "extra": "",
        }

    def pip_platforms(self) -> list[str]:
        """The tags to pass to pip: a manylinux/musllinux tag also accepts every older one."""
        m = _LINUX.match(self.platform)
        if not m or self.platform.startswith("linux_"):
            return [self.platform]
        arch = m.group(6)
        if m.group(4):  # musllinux_1_X
            return [f"musllinux_1_{x}_{arch}" for x in range(int(m.group(5)), 0, -1)]
        glibc = int(m.group(2)) if m.group(1) else _LEGACY_GLIBC[m.group(3)]
        if glibc < 17:
            return [self.platform]
        # pip adds manylinux2010 and manylinux1 itself when given manylinux2014.
        return [f"manylinux_2_{x}_{arch}" for x in range(glibc, 16, -1)] + [f"manylinux2014_{arch}"]


def _swap_ort(requirement: str) -> str:
    """onnxruntime-gpu[...]SPEC; MARKER → onnxruntime SPEC; MARKER (other requirements unchanged)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    req = Requirement(requirement)
    if canonicalize_name(req.name) != ORT_GPU:
        return requirement
    req.name, req.extras = ORT_CPU, set()
    return str(req)


def runtime_requirements(
    target: Target, cpu: bool = False, requires: Sequence[str] | None = None
) -> list[str]:
    """cvtool's requirements on `target`, without extras (no torch, no dev tools), markers evaluated.

    `requires` are Requires-Dist lines (default: the installed cvtool's metadata). With `cpu`,
    onnxruntime-gpu becomes onnxruntime with the same version range.
    """
    from packaging.requirements import Requirement

    if requires is None:
        requires = importlib.metadata.requires("cvtool") or []
    env = target.environment()
    out: list[str] = []
    for line in requires:
        req = Requirement(_swap_ort(line) if cpu else line)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        text = f"{req.name}{'[' + ','.join(sorted(req.extras)) + ']' if req.extras else ''}{req.specifier}"
        if text not in out:
            out.append(text)
    return out


def _run_pip(args: Sequence[str], what: str) -> str:
    """Run `python -m pip ARGS`; BundleError with pip's reason (one line) when it fails."""
    cmd = [sys.executable, "-m", "pip", args[0], "--no-input", "--progress-bar", "off", *args[1:]]
    r = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    output = r.stdout + r.stderr
    if r.returncode != 0:
        raise BundleError(f"{what}: {pip_error(output)}")
    return output


def pip_error(output: str) -> str:
    """The one line that says why pip failed, naming the package where pip names one."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    if any("No module named pip" in ln for ln in lines):
        return f"pip is not installed for {sys.executable}"
    missing = next(
        (m.group(1) for ln in lines if (m := re.search(r"No matching distribution found for (\S+)", ln))),
        None,
    )
    network = next((ln for ln in lines if any(s in ln for s in _NETWORK)), None)
    if network is not None:
        errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", network)
        reason = errno.group(1) if errno else next(s for s in _NETWORK if s in network)
        index = next(
            (" " + ln.split(": ", 1)[1] for ln in lines if ln.startswith("Looking in indexes: ")), ""
        )
        package = f" while looking for {missing}" if missing else ""
        return f"pip could not reach the package index{index} ({reason}){package}"
    if missing is not None:
        found = next(
            (m.group(1) for ln in lines if (m := re.search(r"\(from versions: ([^)]*)\)", ln))), "none"
        )
        if found == "none":
            return f"no wheel of {missing} (none for this Python and platform, or the index is unreachable)"
        found = found if len(found) < 120 else "…" + found[-100:]
        return f"no wheel of {missing} (this Python and platform have wheels of versions {found} only)"
    errors = [ln.removeprefix("ERROR: ") for ln in lines if ln.startswith("ERROR:")]
    return (errors or lines or ["pip failed without a message"])[-1][:300]


def download_wheels(
    requirements: Sequence[str], target: Target, dest: Path, pip_args: Sequence[str] = ()
) -> list[Path]:
    """Wheels of `requirements` and their dependencies for `target`, into `dest` (binary only)."""
    dest.mkdir(parents=True, exist_ok=True)
    platforms = [f"--platform={p}" for p in target.pip_platforms()]
    args = ["download", "--only-binary=:all:", *platforms, "--python-version", target.python]
    args += ["--implementation", "cp", "--dest", str(dest), *pip_args, *requirements]
    _run_pip(args, f"pip download for CPython {target.python} on {target.platform}")
    return sorted(dest.glob("*.whl"))


def source_root(package_dir: Path) -> Path | None:
    """The project folder of the cvtool package in `package_dir`, or None (installed from a wheel)."""
    root = package_dir.resolve().parent
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and re.search(r'^name\s*=\s*"cvtool"', pyproject.read_text("utf-8"), re.M):
        return root
    return None


def _record(data: bytes) -> dict[str, str]:
    """path → sha256 digest of a RECORD file."""
    rows = (ln.rsplit(",", 2) for ln in data.decode("utf-8").splitlines() if ln.count(",") >= 2)
    return {path: digest.removeprefix("sha256=") for path, digest, _ in rows if digest}


def _installed_wheel(dest: Path) -> Path:
    """The wheel the running cvtool was installed from: the local file, else from the index, checked."""
    dist = importlib.metadata.distribution("cvtool")
    direct = json.loads(dist.read_text("direct_url.json") or "{}")
    url = str(direct.get("url", ""))
    if "archive_info" in direct and url.startswith("file:") and url.endswith(".whl"):
        local = Path(unquote(urlparse(url).path))
        if local.is_file():
            return Path(shutil.copy2(local, dest / local.name))
    version = dist.version
    tmp = dest / ".cvtool-download"
    try:
        _run_pip(
            ["download", "--no-deps", "--only-binary=:all:", "--dest", str(tmp), f"cvtool=={version}"],
            f"cvtool {version} is installed from a wheel without its source; downloading that wheel",
        )
        (wheel,) = tmp.glob("cvtool-*.whl")
        with zipfile.ZipFile(wheel) as z:
            record = next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))
            shipped = _record(z.read(record))
        installed = {
            str(f): f.hash.value for f in dist.files or [] if f.hash and str(f).startswith("cvtool/")
        }
        if not installed or any(shipped.get(path) != digest for path, digest in installed.items()):
            raise BundleError(
                f"the cvtool {version} wheel on the package index is not the installed one; install cvtool "
                "from its source folder (pip install DIR) and bundle again"
            )
        return Path(shutil.move(wheel, dest / wheel.name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cvtool_wheel(dest: Path) -> Path:
    """cvtool's own wheel in `dest`: built from the source of the running package when it has one."""
    import cvtool

    dest.mkdir(parents=True, exist_ok=True)
    root = source_root(Path(cvtool.__file__).parent)
    if root is None:
        return _installed_wheel(dest)
    # With hatchling here the build needs no network; otherwise pip fetches it into an isolated env.
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("hatchling") else []
    hint = "" if isolation else " (with hatchling installed here, the build needs no network)"
    _run_pip(
        ["wheel", "--no-deps", *isolation, "--wheel-dir", str(dest), str(root)],
        f"building the cvtool wheel from {root}{hint}",
    )
    wheels = sorted(dest.glob("cvtool-*.whl"))
    if len(wheels) != 1:
        raise BundleError(f"building the cvtool wheel from {root}: expected one wheel, found {len(wheels)}")
    return wheels[0]


def wheel_metadata(wheel: Path) -> tuple[str, list[str]]:
    """(version, Requires-Dist lines) from a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        meta = Parser().parsestr(z.read(name).decode("utf-8"), headersonly=True)
    return str(meta["Version"]), list(meta.get_all("Requires-Dist") or [])


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")


def cpu_wheel(wheel: Path, dest: Path) -> Path:
    """A copy of cvtool's wheel, version +cpu, that requires onnxruntime instead of onnxruntime-gpu.

    Both packages install the same `onnxruntime` module, so `pip install cvtool onnxruntime` can
    work offline only if cvtool does not require the GPU one: METADATA's Version and Requires-Dist
    lines change (the description is left alone), the .dist-info folder is renamed to match, and
    RECORD is written anew.
    """
    version, requires = wheel_metadata(wheel)
    if all(_swap_ort(r) == r for r in requires):  # already so (a cvtool installed from a --cpu bundle)
        return Path(shutil.copy2(wheel, dest / wheel.name))
    new_version = version + ("." if "+" in version else "+") + "cpu"
    name, _, tags = wheel.name[: -len(".whl")].split("-", 2)
    old_info, new_info = f"{name}-{version}.dist-info/", f"{name}-{new_version}.dist-info/"
    out = dest / f"{name}-{new_version}-{tags}.whl"
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        record: list[str] = []
        for info in src.infolist():
            data = src.read(info)
            path = (
                new_info + info.filename[len(old_info) :]
                if info.filename.startswith(old_info)
                else info.filename
            )
            if path == new_info + "RECORD":
                continue
            if path == new_info + "METADATA":
                head, sep, body = data.decode("utf-8").partition("\n\n")
                lines = []
                for line in head.split("\n"):
                    if line.startswith("Version: "):
                        line = f"Version: {new_version}"
                    elif line.startswith("Requires-Dist: "):
                        line = "Requires-Dist: " + _swap_ort(line.removeprefix("Requires-Dist: "))
                    lines.append(line)
                data = ("\n".join(lines) + sep + body).encode("utf-8")
            entry = zipfile.ZipInfo(path, date_time=info.date_time)
            entry.external_attr = info.external_attr
            dst.writestr(entry, data, zipfile.ZIP_DEFLATED)
            record.append(f"{path},sha256={_digest(data)},{len(data)}")
        record.append(f"{new_info}RECORD,,")
        entry = zipfile.ZipInfo(new_info + "RECORD", date_time=(2020, 2, 2, 0, 0, 0))
        entry.external_attr = 0o644 << 16
        dst.writestr(entry, "\n".join(record) + "\n", zipfile.ZIP_DEFLATED)
    return out
