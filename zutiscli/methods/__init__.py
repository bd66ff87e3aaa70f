"""Interchangeable methods behind the stages, one module each, found by name in a registry."""
