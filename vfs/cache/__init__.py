"""The local, content-addressed cache of verified bytes."""
