"""Speed and memory benchmarks; each script prints ratios measured in one run."""
