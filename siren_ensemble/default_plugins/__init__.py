"""Built-in backbones and combiners, registered through the same hooks as third-party plugins."""
