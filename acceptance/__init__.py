"""GPU acceptance run: `python -m acceptance [--out DIR] [--budget-s 480] [--only NAME,...]` (from the
repository root: it reads `tests/golden_checks`, outside the installed engine).

One prepared command that answers the open GPU questions of the engine when a CUDA machine is lent for a few
minutes: it runs named checks, cheapest and most informative first, each with a status (passed / failed /
skipped and why), its measured numbers and its tolerance, and rewrites `DIR/report.json` and `DIR/report.md`
after every check, so that a run cut short still leaves a report. Without CUDA the CUDA checks are skipped
with the reason and the CPU-runnable ones run.

- `runner`: check and result types, the budget, running one check; `report`: the two report files.
- `registry`: the ordered list of checks with their expected seconds.
- `environment`, `golden`, `kernels`, `full_size`, `zerogpu`: the checks themselves (timed with
  `magihuman.timing`; `startup` and `zerogpu` also run as fresh processes). Several GPUs on one clip are
  measured by `torchrun ... -m magihuman.bench --cp N`.
- `cli`: the command line.
"""
