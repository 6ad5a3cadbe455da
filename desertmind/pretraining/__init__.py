"""Self-supervised pretraining of a segmentation network's encoder on unlabelled images
(``desertmind pretrain``), beside the segmentation core: its own LightningModule, data module
and command; a phase starts from its checkpoint with ``--model.init_from``."""
