"""Kestrel training: the transaction simulator, its Kinesis producer, datasets and models."""
