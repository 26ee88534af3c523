"""Methods vLLM mixes into each of its workers (``worker_extension_cls``), called by name through
``LLM.collective_rpc``: the RCRL weight push without pickling functions."""

from __future__ import annotations


class WeightSync:
    """Mixed into vLLM's worker class; ``self.model_runner`` is the worker's."""

    def m3ad_load_weights(self, meta: list, data: bytes) -> int:
        """``meta``/``data``: ``m3ad_rl.engines.weight_transfer.pack_state`` output, the buffer as bytes."""
        import numpy as np

        from m3ad_rl.engines.weight_transfer import unpack_state

        sd = unpack_state((meta, np.frombuffer(bytearray(data), dtype=np.uint8)))
        self.model_runner.model.load_weights(weights=list(sd.items()))
        return len(sd)

    def m3ad_fingerprint(self) -> float:
        return float(sum(p.double().sum().item() for p in self.model_runner.model.parameters()))
