"""SQL entry points of sql/50_history.sql: tables as they were, point-in-time training sets,
what history holds, compaction (inference/history.py, inference/history_compact.py).
"""

from __future__ import annotations

from inference.sql_entry import _entry


@_entry
def history_as_of(relation_name, as_of, into):
    from inference import history

    return history.as_of(relation_name, as_of, into)


@_entry
def history_point_in_time(spine, event_time_column, features, into, ttl):
    from inference import history

    return history.point_in_time(spine, event_time_column, features, into, ttl)


@_entry
def history_info():
    from inference import history

    return history.info()


@_entry
def history_compact(relation_name, older_than):
    from inference import history_compact

    return history_compact.compact(relation_name, older_than)
