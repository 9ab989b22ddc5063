"""Pieces every stage shares: records, atomic I/O, paths, the embedded model, errors."""
