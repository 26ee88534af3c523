"""The pure core: formats, taxonomy, ground truth, config, storage URLs. No torch, no Ray."""
