"""requirements/cpu.lock is in sync with pyproject.toml, envs/tokenscale.yaml and requirements/gpu.lock (no solver
needed)."""

from __future__ import annotations

import re
import tomllib

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import REPO

LOCK = REPO / "requirements/cpu.lock"
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name


def locked(path=LOCK) -> dict[str, tuple[Version, list[str]]]:
    """name -> (version, hashes) of every pinned block of a lock."""
    out = {}
    for block in re.split(r"\n(?=[A-Za-z0-9_.-]+==)", path.read_text()):
        m = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", block)
        if m:
            out[canonicalize_name(m[1])] = (Version(m[2]), re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return out


def test_every_pyproject_requirement_is_locked_within_its_range():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    lock = locked()
    for r in reqs:
        name = canonicalize_name(r.name)
        assert name in lock, f"{r.name} is in pyproject.toml but not in the lock (run scripts/lock.sh)"
        assert r.specifier.contains(lock[name][0], prereleases=True), f"lock has {name}=={lock[name][0]}, not {r}"


def test_every_locked_package_has_a_hash():
    lock = locked()
    assert len(lock) > 50 and "torch" in lock and "deepspeed" in lock
    assert not [n for n, (_, hashes) in lock.items() if not hashes]


def test_conda_environment_pins_the_locked_versions():
    env = yaml.safe_load((REPO / "envs/tokenscale.yaml").read_text())
    lock = locked()
    pins = [d for d in env["dependencies"] if isinstance(d, str)]
    pins += [d for d in next(d["pip"] for d in env["dependencies"] if isinstance(d, dict)) if not d.startswith("-")]
    checked = 0
    for dep in pins:
        m = re.match(r"([A-Za-z0-9_.-]+)\s*==?\s*([0-9][^\s#]*)", dep)
        if dep.startswith(("python", "pip", "c-compiler")) or not m:
            continue
        name = canonicalize_name(CONDA_NAMES.get(m[1], m[1]))
        assert name in lock, f"envs/tokenscale.yaml pins {m[1]}, which the lock does not have"
        assert Version(m[2]).public == lock[name][0].public, f"{m[1]}: conda {m[2]}, lock {lock[name][0]}"
        checked += 1
    unpinned = [d for d in pins if not re.search(r"==?\s*[0-9]", d) and not d.startswith(("pip", "c-compiler"))]
    assert checked >= 10 and not unpinned, unpinned


def test_gpu_lock_differs_from_the_cpu_lock_only_in_torch_and_its_cuda_wheels():
    cpu, gpu = locked(), locked(REPO / "requirements/gpu.lock")
    assert gpu["torch"][0].public == cpu["torch"][0].public and gpu["torch"][0].local is None  # PyPI's CUDA build
    assert cpu["torch"][0].local == "cpu"
    assert not [n for n, (_, hashes) in gpu.items() if not hashes]
    shared = set(cpu) & set(gpu) - {"torch"}
    assert {n: (cpu[n][0], gpu[n][0]) for n in shared if cpu[n][0] != gpu[n][0]} == {}
    assert set(cpu) - set(gpu) == set()
    extra = set(gpu) - set(cpu)
    assert extra and all(n.startswith(("nvidia-", "cuda-")) or n == "triton" for n in extra), sorted(extra)
