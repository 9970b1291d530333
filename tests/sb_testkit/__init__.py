"""Shared test kit: builders of tiny random models saved in the real on-disk formats, synthetic images and
masks with known geometry. Reusable by every issue's tests (import as ``sb_testkit``)."""
