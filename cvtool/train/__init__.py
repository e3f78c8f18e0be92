"""Training (PyTorch). Only this package and cvtool.export import torch."""
