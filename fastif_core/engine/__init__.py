"""The engine's math (tensors in, tensors out; no store, no files). Holds the gradient sketches for now;
the flat engine modules (``objective``, ``hessian``, ``per_example``, ...) move here on another branch."""
