"""Which hardware Sift can use, found without loading any model."""
from __future__ import annotations

import functools
import shutil
import subprocess

__all__ = ["gpu_name", "onnx_providers", "onnx_device", "llm_gpu_offload", "llm_device"]


@functools.lru_cache(maxsize=1)
def gpu_name() -> str | None:
    """Name of the first NVIDIA GPU as nvidia-smi reports it, or None."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return names[0] if out.returncode == 0 and names else None


def onnx_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def onnx_device(preference: str = "auto") -> str:
    """``cuda`` when onnxruntime can use CUDA and the user allows it, else ``cpu``."""
    if preference == "cpu":
        return "cpu"
    return "cuda" if "CUDAExecutionProvider" in onnx_providers() else "cpu"


@functools.lru_cache(maxsize=1)
def llm_gpu_offload() -> bool:
    """Whether the installed llama.cpp build can offload layers to a GPU."""
    try:
        import llama_cpp
    except ImportError:
        return False
    return bool(llama_cpp.llama_supports_gpu_offload())


def llm_device(preference: str = "auto") -> str:
    if preference == "cpu":
        return "cpu"
    return "cuda" if llm_gpu_offload() else "cpu"
