"""What a machine is, as far as its outputs' last bits can tell: the kind of CPU a CPU network's kernels are picked
for, and the model of a GPU. Read from /proc/cpuinfo and from torch where a process has loaded it (never imported
here)."""

from __future__ import annotations

import functools
import platform
import sys
from pathlib import Path

# the instruction sets that torch (ATen's CPU capability) and oneDNN pick a kernel, and so its order of sums, by
ISA_FLAGS = frozenset({"avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                       "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8",  # x86
                       "asimd", "asimdhp", "sve", "sve2", "bf16", "i8mm"})  # Arm


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, ...]:
    """/proc/cpuinfo's lines, read once (each shard's stats ask)."""
    try:
        return tuple(Path("/proc/cpuinfo").read_text().splitlines())
    except OSError:
        return ()


def _field(lines: tuple[str, ...], *names: str) -> str | None:
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":", 1)[0].strip() in names), None)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` says of it: a label for people."""
    return _field(_cpuinfo(), "model name") or platform.processor() or platform.machine() or "unknown"


def cpu_kind() -> str:
    """What a CPU network's kernels are picked by: torch's CPU capability (where this process has loaded torch)
    and the instruction sets the CPU has, e.g. "AVX512: avx avx2 avx512_vnni avx512bw avx512f avx512vl f16c fma".
    Two machines of one kind run the same kernels; a model name cannot tell (a cloud "AMD EPYC" may or may not
    have AVX-512, and one chip goes by several names in virtual machines)."""
    torch = sys.modules.get("torch")
    capability = torch.backends.cpu.get_cpu_capability() if torch is not None else "?"
    flags = (_field(_cpuinfo(), "flags", "Features") or "").split()
    return f"{capability}: {' '.join(sorted(ISA_FLAGS.intersection(flags))) or platform.machine()}"


def gpu_model(device: str) -> str | None:
    """The model of the CUDA device `device` names, where this process has loaded torch and sees CUDA."""
    torch = sys.modules.get("torch")
    if torch is None or not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(torch.device(device))
