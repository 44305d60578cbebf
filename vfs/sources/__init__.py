"""Where a file's bytes come from: a Hub file, a shard member, an upstream root, or memory."""
