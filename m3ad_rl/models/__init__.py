"""Models: the tiny offline Qwen3-VL and (later) engines."""
