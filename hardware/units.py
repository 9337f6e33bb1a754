"""Unit conversions at the YAML and report edges. Everything inside epsim is SI."""

GB = 1e9  # vendors quote link and memory bandwidths in decimal gigabytes
GIB = 2**30  # and memory capacities in binary ones: an "80 GB" H100 holds 80 GiB of HBM3 (5 stacks x 16 GiB)
TB = 1e12
TFLOP = 1e12
US = 1e-6
BITS_PER_BYTE = 8


def gbit_per_s_to_bytes_per_s(gbit_per_s: float) -> float:
    return gbit_per_s * 1e9 / BITS_PER_BYTE

