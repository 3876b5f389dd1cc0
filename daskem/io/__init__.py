"""Reading feature stores and writing per-sample outputs (the io layer)."""
