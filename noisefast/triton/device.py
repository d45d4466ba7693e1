"""The CUDA device a Triton launcher runs on.

A Triton kernel launches on the *current* CUDA device and its current stream, not on the device of
the tensors it is given (torch's own ops switch device with a guard; Triton does not). Tensors on
cuda:1 while cuda:0 is current would be read by a kernel running on cuda:0: an illegal memory
access, or silent peer traffic where peer access is on. Every public launcher of this package is
wrapped with :func:`on_tensor_device`, the Python counterpart of the C++ glue's CUDAGuard.
"""
from __future__ import annotations

import functools

import torch


def on_tensor_device(launcher):
    """Run ``launcher`` with the device of its first tensor argument current (CUDA tensors only)."""

    @functools.wraps(launcher)
    def wrapper(*args, **kwargs):
        for arg in args:
            if isinstance(arg, torch.Tensor):
                device = arg.device
                if device.type == "cuda" and device.index != torch.cuda.current_device():
                    with torch.cuda.device(device):
                        return launcher(*args, **kwargs)
                break
        return launcher(*args, **kwargs)

    return wrapper
