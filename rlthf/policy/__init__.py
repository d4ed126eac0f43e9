"""Policy training and evaluation downstream of the curated data: DPO, generation, win rate."""
