"""``make bench``: the mount measured side by side with what a user would otherwise do (bench/README.md)."""
