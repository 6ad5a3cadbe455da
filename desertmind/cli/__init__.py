"""The ``desertmind`` command: LightningCLI subcommands and the plain tools."""
