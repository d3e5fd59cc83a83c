"""Predictions readable on the source through postgres_fdw."""
