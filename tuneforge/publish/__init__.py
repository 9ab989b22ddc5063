"""Publish: the split (a group -> split table), each shard's export (`shard.py`: what happens to a record at
export time), export formats, the published layout the shards' parts are joined into, the manifest and the
dataset card."""

from tuneforge.publish.split import SPLITS, SplitResult, assign_groups, split_records

__all__ = ["SPLITS", "SplitResult", "assign_groups", "split_records"]
