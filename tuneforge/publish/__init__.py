"""Publish: the split (a group -> split table), export formats, the per-shard parts joined into the dataset
folders and exports, the manifest and the dataset card."""

from tuneforge.publish.split import SPLITS, SplitResult, assign_groups, split_records

__all__ = ["SPLITS", "SplitResult", "assign_groups", "split_records"]
