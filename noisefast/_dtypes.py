"""The dtypes noisefast's ops take, and the dtype their arithmetic runs in."""
import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 data, float32 for everything else (fp16/bf16 are computed in float32 and
    rounded once, like the kernels do)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
