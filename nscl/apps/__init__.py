"""Entry points: command line, notebook facade, notebook suite, sweeps."""
