"""Fine-tuning jobs: classification, instruction tuning, preference tuning (DPO), on the one Trainer."""
