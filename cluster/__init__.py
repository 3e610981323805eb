"""Running on clusters: sbatch scripts that survive preemption (sbatch),
the single-run command (python -m cluster), a one-node SLURM for tests
(local_slurm.sh). docs/clusters.md has the details."""
