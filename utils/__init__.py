"""Shared data, checkpoint, metric and runtime helpers for every stage of the DRS pipeline."""
