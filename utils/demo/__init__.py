"""The synthetic demo dataset and its class-evidence probe."""
