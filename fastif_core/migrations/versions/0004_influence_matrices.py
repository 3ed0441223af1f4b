"""Influence matrices: ``influence_matrices`` (one row per matrix: model, test ids, column positions,
config, chunk layout, status) and ``influence_matrix_chunks`` (float32 blocks of the values).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "influence_matrices",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False),
        sa.Column("test_ids", sa.JSON(), nullable=False),
        sa.Column("test_hash", sa.String(64), nullable=False),
        sa.Column("train_positions", sa.JSON(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column("full", sa.Boolean(), nullable=False),
        sa.Column("row_block", sa.Integer(), nullable=False),
        sa.Column("col_block", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("timings", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("completed_at", sa.DateTime(), nullable=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True),
        sa.UniqueConstraint("model_id", "test_hash", "config_hash", name="uq_influence_matrices_key"),
    )
    op.create_index("ix_influence_matrices_model_id", "influence_matrices", ["model_id"])
    op.create_table(
        "influence_matrix_chunks",
        sa.Column(
            "matrix_id",
            sa.Integer(),
            sa.ForeignKey("influence_matrices.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("row_start", sa.Integer(), primary_key=True),
        sa.Column("col_start", sa.Integer(), primary_key=True),
        sa.Column("num_rows", sa.Integer(), nullable=False),
        sa.Column("num_cols", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("influence_matrix_chunks")
    op.drop_index("ix_influence_matrices_model_id", table_name="influence_matrices")
    op.drop_table("influence_matrices")
