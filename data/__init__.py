"""Data: embedded generators, real-data loaders and LightningDataModules."""
