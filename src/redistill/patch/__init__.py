"""Patch-based inference: run the memory-heavy prefix of a CNN tile by tile (see :func:`patch_model`)."""
