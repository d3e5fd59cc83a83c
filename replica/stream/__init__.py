"""Phase two: follow the slot - the loop, its decisions, batching and apply."""
