"""Unit conversions at the YAML and report edges. Everything inside epsim is SI."""

GB = 1e9  # vendors quote link and memory bandwidths in decimal gigabytes
TB = 1e12
TFLOP = 1e12
US = 1e-6
MS = 1e-3
BITS_PER_BYTE = 8


def gbit_per_s_to_bytes_per_s(gbit_per_s: float) -> float:
    return gbit_per_s * 1e9 / BITS_PER_BYTE


def bytes_per_element(dtype: str, hidden_size: int | None = None) -> float:
    """Bytes a token's hidden vector costs per element on the wire.

    FP8 carries one FP32 scale per 128 elements (DeepEP / DeepSeek-V3 fine-grained quantisation),
    hence 1 + 4/128 bytes per element.
    """
    if dtype == "bf16":
        return 2.0
    if dtype == "fp8":
        return 1.0 + 4.0 / 128.0
    raise KeyError(f"unknown dtype {dtype!r}; valid: bf16, fp8")
