"""Batch runs over folders of photos: stable, collision-free item ids."""
