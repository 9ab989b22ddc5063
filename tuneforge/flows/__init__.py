"""Prefect flows: they compose the stages and hold no logic of their own."""
