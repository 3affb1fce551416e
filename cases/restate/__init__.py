"""Revive's Restate runtime: the admin API client and the operator recovery services."""
