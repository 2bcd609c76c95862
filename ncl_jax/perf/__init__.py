"""Performance tools: the step and input benchmark (benchmark), out-of-memory errors that name a
batch that fits (memory_fit), and the prepared accelerator check (device_check, device_grid,
device_report), and the JAX augmentation ops held to the TF ops with the views' speed
(jax_augment_check)."""
