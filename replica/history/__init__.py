"""History: every version of a mirrored table's rows, kept on the ML replica (docs/history.md).

Why here, below stream/ and clone/: both write history (the stream every change, the copy
the seed versions) and neither may import the other; this package needs only a target
connection. Rows go into append-only tables in schema ``pgml_history`` inside the target
transaction that applies the data, so a version exists if and only if its change is applied
(the progress row commits with both).
"""
