"""The comparison table: several runs of the same inputs (a baseline and one or more ControlNet runs) measured image
by image (``cache.py``), grouped by dataset and category (``grouping.py``), compared with paired bootstrap
statistics (``stats.py``), written as ``table.md`` / ``table.csv`` / ``table.json`` (``table.py``) and shown as a
contact sheet (``contact_sheet.py``)."""
