"""Clean stage: normalisation, filters, PII scrubbing, exact and near-duplicate removal, leakage and
benchmark contamination checks (see docs/clean.md)."""

from tuneforge.clean.config import CleanConfig
from tuneforge.clean.contamination import contamination_report
from tuneforge.clean.leakage import leakage_report
from tuneforge.clean.stage import CleanedShard, CleanResult, clean_shard, run_clean

__all__ = ["CleanConfig", "CleanResult", "CleanedShard", "clean_shard", "contamination_report", "leakage_report",
           "run_clean"]
