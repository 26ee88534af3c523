"""The RL prompt set (rl.parquet) and the per-sample seeds: step ``s`` of a run always sees the same rows
and random streams, so a resumed run redoes exactly what an uninterrupted one would."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq


class PromptSet:
    """rl.parquet in memory: prompt text, image bytes, ground truth, image size; a seeded order per epoch."""

    def __init__(self, url: str, seed: int):
        import fsspec

        from m3ad_rl.train.preflight import check_images

        with fsspec.open(url, "rb") as fh:
            t = pq.read_table(fh).to_pylist()
        if not t:
            raise ValueError(f"{url}: no rows")
        check_images(t, url, lambda r: r["extra_info"]["id"], image_bytes)
        self.rows = t
        self.seed = seed

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, step: int, size: int) -> list[dict]:
        """Rows ``[step·size, (step+1)·size)`` of the endless sequence of shuffled epochs (step from 0)."""
        out = []
        for pos in range(step * size, (step + 1) * size):
            epoch, i = divmod(pos, len(self.rows))
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))
            out.append(self.rows[order[i]])
        return out


def sample_seeds(seed: int, step: int, prompts: int, n: int) -> list[list[int]]:
    """``[prompts][n]`` sampling seeds, one per (run seed, step, prompt index in the step, sample): no two
    samples share a random stream, and a resumed run draws exactly what an uninterrupted one does."""
    return [[int(np.random.SeedSequence([seed, step, i, j]).generate_state(1)[0]) for j in range(n)]
            for i in range(prompts)]  # fmt: skip


def prompt_text(row: dict) -> str:
    return str(row["prompt"][-1]["content"]).replace("<image>", "", 1)


def image_bytes(row: dict) -> bytes:
    return bytes(row["images"][0]["bytes"])
