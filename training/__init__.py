"""Training subpackage (ControlNet trainer, data preparation, export). Filled in by the training issue."""
