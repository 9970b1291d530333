"""Batch runs over folders of photos: stable item ids, the processes of a run and their shares, per-item records,
and running items in batches with file reading and writing overlapped."""
