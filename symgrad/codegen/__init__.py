"""Code generation: lowering of symgrad graphs to Numba source."""
