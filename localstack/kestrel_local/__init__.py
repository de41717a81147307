"""Kestrel's local serverless platform: AWS emulator, provisioning, local Lambda runtime."""
