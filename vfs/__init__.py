"""llava-video-vfs: a read-only FUSE view of LLaVA-Video-178K served lazily from the Hugging Face Hub."""

__version__ = "0.1.0"
