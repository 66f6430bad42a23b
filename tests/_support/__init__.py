"""Helpers shared by the tests: fake datasets, tiny configurations, alpha cases, subprocess entry points."""
