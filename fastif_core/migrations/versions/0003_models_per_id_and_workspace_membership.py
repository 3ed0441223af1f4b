"""One training order per model, model lineage and the active model, workspace membership of examples.

- ``training_examples`` (model_id, pos, example_id): FAISS position ``pos`` of a model's training set.
  Written once per model, never changed, so a process that read the manifest's model id always maps
  positions to the right examples, whatever a concurrent prepare is doing.
- ``models.lineage`` (how the model was made: base model, method, settings, data hash, parent) and
  ``models.active`` (the model the workspace serves; switched together with the examples' membership).
- ``examples.in_workspace``: whether the example belongs to the workspace's current sources (browse
  shows only these; rows of earlier sources stay for the results that refer to them).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "training_examples",
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("pos", sa.Integer(), primary_key=True),
        sa.Column(
            "example_id", sa.String(200), sa.ForeignKey("examples.id", ondelete="CASCADE"), nullable=False
        ),
        sa.UniqueConstraint("model_id", "example_id", name="uq_training_examples_model_example"),
    )
    # plain ALTER TABLE ADD COLUMN, never a batch "move and copy": on SQLite that drops and recreates the
    # table, and with foreign keys on the DROP cascades into predictions, neighbours and influence runs
    op.add_column("models", sa.Column("lineage", sa.JSON(), nullable=False, server_default=sa.text("'{}'")))
    op.add_column("models", sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column(
        "examples", sa.Column("in_workspace", sa.Boolean(), nullable=False, server_default=sa.true())
    )


def downgrade() -> None:
    with op.batch_alter_table("examples") as batch:
        batch.drop_column("in_workspace")
    with op.batch_alter_table("models") as batch:
        batch.drop_column("active")
        batch.drop_column("lineage")
    op.drop_table("training_examples")
