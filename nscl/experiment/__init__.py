"""One experiment: the parameter schema (config), the training loop (trainer), run records."""
