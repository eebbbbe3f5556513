"""Pretraining strategies: sources x SSL methods x encoders -> one shared encoder checkpoint."""
