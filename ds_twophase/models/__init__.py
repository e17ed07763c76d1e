"""Models by name: CIFAR ResNets, WideResNets, ResNet-50, an MNIST-1D CNN and timm models."""
