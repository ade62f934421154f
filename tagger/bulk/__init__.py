"""Bulk tagging at dataset scale: ``python -m tagger.bulk INPUT... --out DIR``.

One module per job, in the order data flows:

* ``sources``: the inputs (folders, zip, tar/webdataset, Parquet, ``datasets``) in a fixed order;
* ``plan``: which of their images this run tags (shards, resume, captions kept);
* ``decode``: decoding in worker processes;
* ``inference``: batching by token count and the model step, shared by both engines;
* ``outputs``: captions, JSONL and Parquet, written atomically;
* ``safefs``: reading and writing never through links, pipes or devices, 256 MiB per image;
* ``names``: file names that are not UTF-8, escaped reversibly for text outputs;
* ``resume``: the manifest and what an output folder already holds;
* ``lock``: one writer per shard of an output folder;
* ``sharding``: ``--shard i/N`` and one process per GPU;
* ``local`` and ``ray_engine``: the two engines; ``cli``: the command.
"""

from tagger.bulk.cli import main
from tagger.errors import BulkError

__all__ = ["BulkError", "main"]
