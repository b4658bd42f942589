"""Scoring trained models: batched clean/adversarial prediction, MedMNIST-C tables, robustness reports."""
