"""Training: RAWS SFT and RCRL (GRPO) on Ray + DeepSpeed, checkpoints, tracking."""
