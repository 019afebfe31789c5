"""State: the database proxy, the models, the migrations and the hot-path queries."""

from db.database import database

__all__ = ["database"]
