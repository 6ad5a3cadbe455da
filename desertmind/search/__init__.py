"""Hyperparameter search over the phases (``desertmind sweep``), beside the training core."""
