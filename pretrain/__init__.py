"""Pre-training: balancers, the shared loss-aggregation callback and the LightningModules."""
