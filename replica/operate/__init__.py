"""What people touch: CLI verbs, the runner, the HTTP API and dashboard, reports."""
