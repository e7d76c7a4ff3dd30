"""Hydra glue: resolvers and typed schemas. Importing this module registers both (idempotent)."""

from cg_lightning.config.resolvers import register_resolvers
from cg_lightning.config.schema import register_schemas

register_resolvers()
register_schemas()

__all__ = ["register_resolvers", "register_schemas"]
