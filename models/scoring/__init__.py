"""The object-expansion score (SAM protocol) of the paper."""
