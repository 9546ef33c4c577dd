"""Thin adapters to the system: addresses and routes, file capabilities, ..."""
