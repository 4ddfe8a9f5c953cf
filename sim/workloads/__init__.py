"""Torch-free workload builders: the IR op graphs of kernels and model layers.

``attention`` describes the attention kernels of ``kernels/attention.py`` op by op;
``transformer`` lowers transformer layers for the training and inference studies.
"""
