"""initcore's pytest plugin and the helpers shared by bench/ and tests/ (the only home of pytest imports)."""
