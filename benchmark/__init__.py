"""The MedMNIST robustness benchmark: versioned protocols, `evaluate` -> one entry (a result record with the protocol
and a gradient-masking screen), exports (RobustBench model_info, Hugging Face model card) and the static page."""
