"""What this machine offers a run, asked before any work: bf16 arithmetic, CPU flags, memory, writable folders."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Optional

from .errors import UserError

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
