"""Training: the LightningModule, losses, metrics, schedulers, freezing, checkpoints and
provenance."""
