"""The CPU-model engine: domain CPU XML, comparison, fixes, fleet baselines, microcode."""
