"""What exists: annotation parsing, shard indexes, and the per-commit catalog persisted on disk."""
