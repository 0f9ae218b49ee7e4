"""Small pieces the commands share: their argument parser, comma-separated options, a headless matplotlib."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, Optional

from .errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the project's own commands: a bad option is a UserError, shown as one line."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see {self.prog} --help)")

    def parse_args(self, args=None, namespace=None):
        # "--seeds -1,2": argparse takes a value starting with "-" for an option and answers "expected one
        # argument"; a value that starts like a negative number is joined to its option instead.
        args = list(args or [])
        joined, i = [], 0
        while i < len(args):
            if args[i].startswith("--") and "=" not in args[i] and i + 1 < len(args) and re.match(r"^-\d", args[i + 1]):
                joined.append(f"{args[i]}={args[i + 1]}")
                i += 2
            else:
                joined.append(args[i])
                i += 1
        return super().parse_args(joined, namespace)


SEED_RANGE = (0, 2**32 - 1)  # what numpy (and so Lightning's seed_everything) accepts


def check_seed(option: str, seed) -> None:
    if seed is not None and not isinstance(seed, bool) and isinstance(seed, int) and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise UserError(f"{option}: a seed is between {SEED_RANGE[0]} and {SEED_RANGE[1]}, got {seed}")


def comma_list(cast: Callable = str) -> Callable[[str], list]:
    """An argparse `type` for "a,b,c" options; a bad item is reported by argparse as the option's error."""

    def parse(text: str) -> list:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        try:
            return [cast(item) for item in items]
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{text!r}: {err}") from err

    return parse


def digest(*parts) -> str:
    """A short stable name for JSON-able parts (cache file names)."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


NO_BF16 = "this CPU has no bf16 arithmetic that oneDNN can use (it needs AVX-512; AVX-512-BF16 or AMX make it fast)"


def cpu_runs_bf16() -> bool:
    """Can oneDNN compute in bf16 on this CPU? It needs AVX-512 (fast with AVX-512-BF16 or AMX); without it
    a bf16 LSTM fails inside torch and other layers are emulated at a tenth of fp32's speed."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


def cpu_flags() -> list[str]:
    """The vector-arithmetic flags that decide CPU speed here (AVX2, AVX-512, its BF16 and VNNI, AMX)."""
    try:
        line = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags"))
    except (OSError, StopIteration):
        return []
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_tile")
    return [f for f in line.split(":", 1)[1].split() if f in wanted]


def clustered_standard_error(correct, groups) -> float:
    """Standard error of an accuracy whose reviews come in correlated clusters (films).

    The cluster-robust (sandwich) estimate: reviews of one film succeed or fail together, so a
    split of 2,500 reviews from ~340 films is noisier than 2,500 independent reviews would be.
    """
    import numpy as np

    n = len(correct)
    if n < 2:
        return float("nan")
    _, cluster = np.unique(groups, return_inverse=True)
    clusters = cluster.max() + 1
    if clusters < 2:
        return float("nan")
    residuals = np.bincount(cluster, weights=correct - correct.mean())  # (clusters,)
    return float(np.sqrt(clusters / (clusters - 1) * np.sum(residuals**2)) / n)


def check_writable(folder: str | Path, option: str) -> None:
    """A folder a command will write to, tried before any work: one that cannot be made or written (under a
    file, on a read-only disk) is one line naming the option. What the try makes, it removes."""
    folder, made = Path(folder), []
    try:
        missing = folder
        while not missing.exists() and missing != missing.parent:
            made.append(missing)
            missing = missing.parent
        for path in reversed(made):
            path.mkdir()
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as err:
        raise UserError(f"{option} {folder}: cannot write there ({err.strerror or err})") from err
    finally:
        for path in made:
            with contextlib.suppress(OSError):
                path.rmdir()


def available_memory() -> Optional[int]:
    """Bytes of memory this process may still take: the kernel's MemAvailable, or less under a cgroup limit."""
    found = []
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    try:  # a container's limit (cgroup v2), less what the group already uses
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        if limit.isdigit():
            found.append(int(limit) - int(open("/sys/fs/cgroup/memory.current").read()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def pyplot():
    """matplotlib.pyplot drawing to files only (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
