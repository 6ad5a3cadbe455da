"""Using a trained network: test-time augmentation, prediction files and export."""
