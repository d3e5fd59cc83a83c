"""pgml.expose on the ML replica and `pgml-replica writeback` on the source."""
