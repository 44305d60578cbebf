"""A small, generated dataset shaped like LLaVA-Video-178K, for the demo, the tests and the benchmarks."""
