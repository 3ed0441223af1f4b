"""fastif_core: fast influence functions (FastIF) for transformer NLP models.

Sign convention, used everywhere in this package (as in Koh & Liang 2017 and the FastIF paper):
``I(z, z_test) = -∇L(z_test)ᵀ H⁻¹ ∇L(z)``. A *positive* influence means up-weighting the training
example z raises the test loss: z is **harmful**. A *negative* influence means z lowers the test
loss: z is **helpful**. "Most helpful" = most negative, "most harmful" = most positive.

Modules, one per concept: ``config`` (typed settings), ``errors``, ``data`` (records, loaders,
built-in corpus), ``model`` (load, freeze, train, predict, features), ``objective`` (the loss whose
gradients and Hessian define influence), ``hessian`` (HVP, LiSSA, exact inverse-HVP reference),
``influence`` (scoring candidates), ``knn`` (FAISS), ``parallel`` (torch.distributed),
``store`` (SQLAlchemy), ``workspace`` (prepare / query pipeline), ``jobs`` and ``worker``,
``bench`` and ``cli``.
"""

__version__ = "0.1.0"
