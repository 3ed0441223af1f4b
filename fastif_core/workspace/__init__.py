"""A workspace on disk: ``layout`` (paths, manifest, :class:`~fastif_core.workspace.layout.LoadedWorkspace`),
``prepare`` (import data, fine-tune, predict, index) and ``versions`` (model versions of one workspace)."""
