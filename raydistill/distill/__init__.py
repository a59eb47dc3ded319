"""The ED core in plain PyTorch: losses, the curriculum plan, and the engine."""
