"""Predictions readable on the source through postgres_fdw (`pgml-replica writeback`).

Why this shape: the application lives on the managed source (RDS), which cannot score models,
so the source gets *foreign tables* over the ML replica's ``pgml_out`` views (see
sql/30_expose.sql). The replica side is a login role that can read those views and nothing
else; the source side is the ``postgres_fdw`` extension, a foreign server pointing at the
replica as the *source* reaches it, a user mapping holding the reader's password, a schema
(``ml``) with a foreign table per exposed view of the project, and a ``<view>_joined`` view
that puts each prediction next to its source row. Idempotent and declarative: running it
again converges; ``drop=True`` removes what it made.

Modules, one concern each (nothing here imports ``replica.operate``; the CLI verb lives in
``replica.operate.writeback_verb``):

- ``model``: ``Exposure``, ``WritebackResult``, defaults and the markers of what was made
- ``secret_ddl``: the reader's password, read and spliced into DDL without being logged
- ``replica_side``: the reader role and each exposure's mode on the ML replica
- ``source_sql``: the source's DDL and the printed SQL, built without a server
- ``source_side``: postgres_fdw, server, mapping, foreign tables, joined views on the source
- ``removal``: ``--drop``, which removes only what write-back made
- ``setup``: ``writeback()``, the order of the steps and the one exit point for errors
"""
