"""The segmentation stage: DeepLab-V2 / V3+ data, training recipes and evaluation on pseudo labels."""
