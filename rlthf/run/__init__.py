"""The run driver: the resumable RLTHF loop, its steps and its report."""
