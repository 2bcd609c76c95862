"""The training loop (loop), the workdir's checkpoints (checkpointing), a saved run read back
(saved_runs), grids of runs (sweep) and the CPU device split (host_devices)."""
