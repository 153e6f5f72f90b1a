"""Benchmarks: `python -m magihuman.bench` (modes and flags: `cli`).

`workload` (layouts, random DiTs, inputs, fp8 quality) and `flops` (the arithmetic) are shared by the modes:
`pipeline`, `preview`, `forward`, and `parallel` (several GPUs under torchrun). `memory`: peak and free GPU
memory. Timing goes through `magihuman.timing`.
"""
