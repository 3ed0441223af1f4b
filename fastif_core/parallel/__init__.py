"""Many devices: ``group`` (the ``torch.distributed`` device group and its command protocol), ``peers``
(heartbeats and bounded barriers between ranks) and ``spmd`` (the one influence body every rank runs)."""
