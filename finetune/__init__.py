"""Downstream adaptation: heads, metrics and fine-tuning suites, one module per task family."""
