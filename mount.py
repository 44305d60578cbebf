#!/usr/bin/env python3
"""Mount LLaVA-Video-178K: ``python mount.py --config FILE MOUNTPOINT`` (same as ``llava-vfs mount``)."""

import sys

from vfs.cli import main

if __name__ == "__main__":
    sys.exit(main(["mount", *sys.argv[1:]]))
