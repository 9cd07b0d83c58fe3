"""Training loops (similarity model now; attribute models later)."""
