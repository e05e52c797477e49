"""What a run writes for people: markdown tables, pictures, training curves."""
