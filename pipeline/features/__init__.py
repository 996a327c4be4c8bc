"""Scattering features of tracks and their on-disk store."""
