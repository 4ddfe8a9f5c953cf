"""Design-space exploration (``xpusim explore``) and what-if studies (``xpusim whatif``).

docs/explore.md describes the study file, the stages and the outputs.
"""
