"""Network definitions: plain ``nn.Module`` classes with explicit constructor arguments."""
