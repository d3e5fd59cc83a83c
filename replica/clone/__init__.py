"""Phase one: publication and slot, then the parallel snapshot copy."""
