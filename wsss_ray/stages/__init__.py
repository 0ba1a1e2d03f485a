"""Stages: the only package that imports Ray. Each stage reads and writes the run directory
and skips work that is already complete."""
