"""Sweeps: a sweep file's points x seeds, trained here or on SLURM, and a
report of the paper's claims over seeds (docs/sweeps.md).

  python -m sweeps --sweep=configs/sweeps/paper_ablations.py:seeds=3 \\
      --config=configs/demo.py --workdir=runs/paper_demo

  runs      the runs of a sweep: their flags and sub-workdirs, and whether each finished
  slurm     the sbatch array script of a sweep's runs
  report    the report: errors per point over seeds, the claims, two figures
  __main__  the command: trains the unfinished runs, or emits them, then reports
"""
