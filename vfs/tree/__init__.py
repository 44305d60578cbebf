"""The tree a mount shows: the inode table, availability, views, reports, planning and the snapshot."""
