"""The CPU-model engine of ``virtdeb cpu-check`` (see DESIGN §2)."""
