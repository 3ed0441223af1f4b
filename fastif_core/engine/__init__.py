"""The math of influence, tensors in and tensors out: no store, no files, no workspace.

``examples`` (the training-set protocol and batching), ``objective`` (the loss whose gradients and
curvature define influence), ``curvature`` (Hessian and Gauss-Newton vector products, exact references),
``woodbury`` (the exact Gauss-Newton solve), ``per_example`` (per-example gradient dots), ``solvers``
(s_test for one or M right-hand sides), ``iterations`` (the per-vector LiSSA and CG steps), ``scoring``
(every candidate-scoring kernel), ``influence`` (test gradients, s_test, scores: one call); ``sketch``
(gradient sketches inside the hooked backward) and ``sketch_curvature`` (the sketch-space curvature).
"""
