"""Initial schema: datasets, examples, models, predictions, neighbors, jobs, influence runs and scores,
application results (graphs, correction runs, bench runs).

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JOB_STATUSES = "('queued', 'running', 'done', 'failed', 'cancelled')"


def _created() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(), nullable=False)


def _app_result_columns() -> list[sa.Column]:
    return [
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        _created(),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True),
    ]


def upgrade() -> None:
    _create_data_tables()
    _create_jobs()
    _create_result_tables()


def _create_data_tables() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("label_scheme", sa.String(64), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("num_examples", sa.Integer(), nullable=False),
        _created(),
    )
    op.create_table(
        "examples",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column(
            "dataset_id", sa.Integer(), sa.ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("split", sa.String(64), nullable=False),
        sa.Column("premise", sa.Text(), nullable=False),
        sa.Column("hypothesis", sa.Text(), nullable=False),
        sa.Column("label", sa.String(64), nullable=False),
        sa.Column("genre", sa.String(128), nullable=True),
        sa.Column("heuristic", sa.String(128), nullable=True),
        sa.Column("subcase", sa.String(128), nullable=True),
        sa.Column("template", sa.String(128), nullable=True),
        sa.Column("slices", sa.JSON(), nullable=False),
        sa.Column("extra", sa.JSON(), nullable=False),
        sa.Column("train_pos", sa.Integer(), nullable=True, unique=True),
    )
    op.create_index("ix_examples_dataset_split", "examples", ["dataset_id", "split"])
    for col in ("label", "genre", "heuristic", "subcase"):
        op.create_index(f"ix_examples_{col}", "examples", [col])
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("checkpoint_path", sa.Text(), nullable=False),
        sa.Column("train_config", sa.JSON(), nullable=False),
        sa.Column("config_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("label_names", sa.JSON(), nullable=False),
        _created(),
    )
    op.create_table(
        "predictions",
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", ondelete="CASCADE"), primary_key=True),
        sa.Column(
            "example_id", sa.String(200), sa.ForeignKey("examples.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("probs", sa.JSON(), nullable=False),
        sa.Column("predicted", sa.String(64), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("correct", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_predictions_model_predicted", "predictions", ["model_id", "predicted"])
    op.create_index("ix_predictions_model_correct", "predictions", ["model_id", "correct"])
    op.create_table(
        "neighbors",
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", ondelete="CASCADE"), primary_key=True),
        sa.Column(
            "query_id", sa.String(200), sa.ForeignKey("examples.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("rank", sa.Integer(), primary_key=True),
        sa.Column(
            "train_id", sa.String(200), sa.ForeignKey("examples.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("distance", sa.Float(), nullable=False),
    )


def _create_jobs() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("params_hash", sa.String(64), nullable=False),
        sa.Column("dedup_key", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=True),
        sa.Column("device", sa.String(64), nullable=True),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        _created(),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.CheckConstraint(f"status IN {JOB_STATUSES}", name="ck_jobs_status"),
        sa.UniqueConstraint("kind", "dedup_key", name="uq_jobs_kind_dedup"),
    )
    op.create_index("ix_jobs_params_hash", "jobs", ["params_hash"])


def _create_result_tables() -> None:
    op.create_table(
        "influence_runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False),
        sa.Column(
            "example_id", sa.String(200), sa.ForeignKey("examples.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column("num_candidates", sa.Integer(), nullable=False),
        sa.Column("timings", sa.JSON(), nullable=False),
        sa.Column("s_test_stats", sa.JSON(), nullable=False),
        _created(),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True),
        sa.UniqueConstraint("model_id", "example_id", "config_hash", name="uq_influence_runs_key"),
    )
    op.create_index("ix_influence_runs_example_id", "influence_runs", ["example_id"])
    op.create_table(
        "influence_scores",
        sa.Column(
            "run_id", sa.Integer(), sa.ForeignKey("influence_runs.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column(
            "train_id", sa.String(200), sa.ForeignKey("examples.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
    )
    op.create_index("ix_influence_scores_run_rank", "influence_scores", ["run_id", "rank"])
    for table in ("graphs", "correction_runs"):
        op.create_table(
            table,
            *_app_result_columns(),
            sa.Column(
                "model_id", sa.Integer(), sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=True
            ),
            sa.UniqueConstraint("model_id", "kind", "config_hash", name=f"uq_{table}_key"),
        )
    op.create_table("bench_runs", *_app_result_columns())


def downgrade() -> None:
    for table in (
        "bench_runs",
        "correction_runs",
        "graphs",
        "influence_scores",
        "influence_runs",
        "jobs",
        "neighbors",
        "predictions",
        "models",
        "examples",
        "datasets",
    ):
        op.drop_table(table)
