"""Where and in what precision work runs: ``--device auto`` and ``--dtype auto`` mean the same
everywhere.

* device ``auto``: CUDA when present, else the CPU (under ``torchrun``, the process's local GPU).
* dtype ``auto``: bf16 where the hardware runs it natively (GPUs, CPUs with AVX512-BF16 or AMX),
  else fp32. Training keeps fp32 master weights and uses bf16 autocast; inference loads the weights
  in it.

Every output records the choice as :func:`describe` says it, e.g. ``{"device": "cpu, 2 thread(s)",
"dtype": "bf16"}``.
"""

from __future__ import annotations

import contextlib
import os

import torch

from pauserec.errors import UserError

DEVICES_HELP = "auto (CUDA when present), cpu, cuda, cuda:1, ..."
DTYPES = ("auto", "bf16", "fp16", "fp32")
_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda`` -> this process's local GPU."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}' ({DEVICES_HELP})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' requested but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"unsupported device '{name}' ({DEVICES_HELP})")
    return device


def native_bf16(device: torch.device) -> bool:
    """GPUs, and CPUs with bf16 instructions (AVX512-BF16 or AMX) whose AVX-512 kernels torch uses
    (not when ``ATEN_CPU_CAPABILITY`` limits them to AVX2), run bf16 matmuls natively."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # e.g. ATEN_CPU_CAPABILITY=avx2
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return False
    checks = [
        getattr(torch.cpu, name, None)
        for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    ]
    return any(check is not None and check() for check in checks)


def resolve_dtype(name: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where native, else ``fp32``; other names are checked and returned."""
    if name not in DTYPES:
        raise UserError(f"unknown dtype '{name}' (known: {', '.join(DTYPES)})")
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if name == "fp16" and device.type == "cpu":
        raise UserError("dtype fp16 needs a GPU (use bf16 or fp32 on the CPU)")
    return name


def torch_dtype(name: str) -> torch.dtype:
    return _TORCH_DTYPES[name]


def autocast(device: torch.device, dtype: str):
    """Autocast to ``dtype`` (bf16/fp16) around a forward pass; a no-op for fp32."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch_dtype(dtype))


def name_of(device: torch.device) -> str:
    """A human-readable device name: the GPU model, or the CPU with its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu, {torch.get_num_threads()} thread(s)"


def describe(device: torch.device, dtype: str) -> dict[str, str]:
    """What every output records about where it ran."""
    return {"device": name_of(device), "dtype": dtype}


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings mean what they say."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world) -- joins the ``torchrun`` process group when WORLD_SIZE > 1."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
