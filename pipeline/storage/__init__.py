"""Keyed atomic stage outputs, manifests and the run journal."""
