"""Validation against published measurements: the corpus, the runner, the report.

``corpus`` reads the rows (``sim/data/validation/*.toml``), ``metrics`` turns a
command's JSON output into the row's published quantity, ``baseline`` gives the naive
peak-FLOP/s / peak-bandwidth answer, ``runner`` runs every row through the same CLI
code a user's command runs, and ``summary`` scores the results.
"""
