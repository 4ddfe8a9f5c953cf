"""The typed Python API: one function per study, each taking a request and returning a
result whose ``as_dict()`` is the command's ``--json`` (``xpusim.api`` re-exports them).

The CLI is a thin layer over this package: parse flags -> request -> study -> render.
"""
