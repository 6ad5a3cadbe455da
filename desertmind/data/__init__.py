"""The dataset: class table, reading and pairing files, augmentation, the data module,
statistics and synthetic data."""
