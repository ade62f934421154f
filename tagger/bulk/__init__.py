"""Bulk tagging at dataset scale: ``python -m tagger.bulk INPUT... --out DIR``.

One module per job, in the order data flows: ``sources``, ``plan``, ``decode``, ``inference``,
``outputs`` (with ``safefs`` and ``names``), ``resume``, ``lock``, ``sharding``; ``local`` and
``ray_engine`` are the two engines, ``cli`` the command.
"""

from tagger.bulk.cli import main
from tagger.errors import BulkError

__all__ = ["BulkError", "main"]
