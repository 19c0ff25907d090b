"""Plain ``nn.Module`` models. Nothing here imports Lightning, Hydra or a balancer."""
