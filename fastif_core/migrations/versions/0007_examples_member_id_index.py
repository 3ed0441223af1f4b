"""Browse's pages past the first: a covering index on (in_workspace, id), so the ids of a page at any
offset are read from the index alone (the last page of 400,000 in 0.01 s instead of 0.8 s), and ANALYZE.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_examples_member_id", "examples", ["in_workspace", "id"])
    # statistics for the planner: without them SQLite takes the new index for filters that match nearly
    # every example (in_workspace = 1) and looks each row up, 5-7x slower than the scan it replaces
    op.execute("ANALYZE")


def downgrade() -> None:
    op.drop_index("ix_examples_member_id", table_name="examples")
