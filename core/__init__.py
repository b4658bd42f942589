"""What every layer may import: user-facing errors, atomic file writes, value checks."""
