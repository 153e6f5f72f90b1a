"""GPU acceptance run: `python -m magihuman.acceptance [--out DIR] [--budget-s 480] [--only NAME,...]`.

One prepared command that answers the open GPU questions of the engine when a CUDA machine is lent for a few
minutes: it runs named checks, cheapest and most informative first, each with a status (passed / failed /
skipped and why), its measured numbers and its tolerance, and rewrites `DIR/report.json` and `DIR/report.md`
after every check, so that a run cut short still leaves a report. Without CUDA the CUDA checks are skipped
with the reason and the CPU-runnable ones run.

- `runner`: check and result types, the budget, running one check; `report`: the two report files.
- `registry`: the ordered list of checks with their expected seconds.
- `environment`, `golden`, `kernels`, `full_size`, `zerogpu`, `context_parallel`: the checks themselves
  (`measure`: their timing helpers; `startup` and `zerogpu` also run as fresh processes).
- `cli`: the command line.
"""
