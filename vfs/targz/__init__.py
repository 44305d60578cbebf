"""The read path of a .tar.gz shard: zlib bindings, gzip checkpoints, shard index, member extraction."""
