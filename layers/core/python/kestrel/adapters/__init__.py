"""Adapters: implementations of `kestrel.ports` on redis-py and boto3."""
