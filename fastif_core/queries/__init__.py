"""Questions asked of a prepared workspace: ask, store once, read back. ``influence`` (one or many test
examples, and which examples there are), ``matrix`` (the stored influence matrix)."""
