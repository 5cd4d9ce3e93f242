"""The PyTorch side: MNIST data, architectures, training, pruning, distillation."""
