"""The Hub layer: the async client the daemon uses, and a local emulator for tests, the demo and mirrors."""
