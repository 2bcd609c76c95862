"""The method: every NCL equation (losses), the MoCo branch (moco), the train state (state),
the pure per-device train and eval steps (train_step), the optimiser and schedules (optim) and
every metric (metrics). Nothing here reads a config or a file."""
