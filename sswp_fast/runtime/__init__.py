"""What every driver (search, downstream stages, NASiam) shares: the device and process group, run folders,
atomic checkpoints and resumable RNG state, reporting, mixed precision and the learning-rate schedule."""
