"""The model and its neighbours: ``classifier`` (load, freeze, train, predict, pooled features) and
``knn`` (the FAISS index over those features)."""
