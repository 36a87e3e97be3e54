"""agents: which process of the agent deregistered it (issue 12)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04 20:00:00

A warm stop deregisters the agent while its last long poll may still be in flight. A claim call that reached the
server after the deregistration could not tell "my own agent has stopped" (claim nothing, keep the mark) from "an
earlier process of this identity stopped, and I am its successor" (undo the mark): it guessed by comparing the
deregistration's time with the call's start, and guessed wrong when the request was still on its way as the
deregistration committed. The agent now names its process (a random id per start) on its claims and on its
deregistration, which is stored here; a claim by the process that deregistered claims nothing, any other undoes it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: a deregistration by an agent that does not name its process (before this field), and every agent
    # that is not deregistered.
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("deregistered_by", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("deregistered_by")
