"""Kestrel core: the domain and its adapters, shipped to Lambda as the core layer."""
