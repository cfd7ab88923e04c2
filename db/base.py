"""The declarative base and the column shapes every model shares."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Integer, MetaData, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, mapped_column

# Predictable constraint names, so that Alembic migrations can name what they change.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSONB on PostgreSQL, plain JSON on SQLite (the demo).
JsonType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    """The one declarative base of Taskyard's models."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        dict[str, Any]: JsonType,
        list[Any]: JsonType,
        dt.datetime: DateTime(timezone=True),
    }


# SQLite autoincrements only an INTEGER primary key; PostgreSQL gets a bigint.
BigIntType = BigInteger().with_variant(Integer(), "sqlite")
BigIntPk = Annotated[int, mapped_column(BigIntType, primary_key=True, autoincrement=True)]
CreatedAt = Annotated[dt.datetime, mapped_column(server_default=func.now())]
UpdatedAt = Annotated[dt.datetime, mapped_column(server_default=func.now(), onupdate=func.now())]
TenantId = Annotated[
    int, mapped_column(BigIntType, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False)
]
