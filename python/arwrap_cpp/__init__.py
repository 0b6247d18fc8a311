"""arwrap_cpp: a native (LibTorch C++) implementation of the autoregressive training step.

Importing this package loads ``libarwrap``, which registers the ``torch.ops.arwrap.*``
operators (usable from Python, TorchScript, torch.compile and C++ alike).
"""
from __future__ import annotations

import os

import torch  # libtorch must be loaded before our library

from . import _C
from .ops import attention, attention_lse, cross_entropy, linear_cross_entropy, shift_tokens
from .transformer import Decoder, TransformerWrapper
from .wrapper import AutoregressiveWrapper
from . import checkpoint  # noqa: E402  (checkpoints shared with the C++ trainer)
from .checkpoint import load_model, save_checkpoint

__version__ = _C.__version__

_PKG_DIR = os.path.dirname(os.path.abspath(_C.__file__))

#: Directory to add to CMAKE_PREFIX_PATH so that ``find_package(arwrap)`` finds the
#: installed C++ package (headers, libarwrap and the ``arwrap::arwrap`` target).
cmake_prefix_path = os.path.join(_PKG_DIR, "share", "cmake")

#: The shared library holding the operators (for ``torch.ops.load_library`` elsewhere).
library_path = os.path.join(_PKG_DIR, "lib", "libarwrap.so")


def built_with_cuda() -> bool:
    """True when libarwrap was compiled with its CUDA kernels."""
    return bool(_C.built_with_cuda())


def lowp_gemm_upcasts(dtype: torch.dtype = torch.bfloat16) -> bool:
    """True when the native net computes CPU products in ``dtype`` (bf16/fp16) on the float32
    route: this CPU has no fast ATen GEMM for it (no AVX-512 on x86), or ARWRAP_LOWP_GEMM=fp32
    says so (docs/mixed_precision.md)."""
    return bool(_C.lowp_gemm_upcasts(dtype))


def attention_cpu_kernel() -> str:
    """The build of the fused CPU attention this process runs, chosen once from the CPU's features:
    ``"amx"`` (bfloat16 products on AMX tiles), ``"avx512_bf16"`` (on vdpbf16ps), ``"avx512"``,
    ``"avx2"`` or ``"base"``; ARWRAP_CPU_ISA picks a lesser one (docs/python.md)."""
    return str(_C.attention_cpu_kernel())


def distributed_available() -> bool:
    """True when libarwrap was built with c10d/Gloo: arwrap-train and C++ programs run data-parallel
    under torchrun (needs gloo's headers at build time: apt-get install libgloo-dev)."""
    return bool(_C.distributed_available())


__all__ = [
    "AutoregressiveWrapper",
    "TransformerWrapper",
    "Decoder",
    "checkpoint",
    "load_model",
    "save_checkpoint",
    "shift_tokens",
    "cross_entropy",
    "attention",
    "attention_lse",
    "linear_cross_entropy",
    "cmake_prefix_path",
    "library_path",
    "built_with_cuda",
    "lowp_gemm_upcasts",
    "attention_cpu_kernel",
    "distributed_available",
]
