"""The source database: the replication connection, catalog reads, preflight."""
