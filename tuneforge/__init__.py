"""tuneforge: raw corpora to fine-tuning data, train-then-eval runs, and proof of what the fine-tune did."""

__version__ = "0.1.0"
