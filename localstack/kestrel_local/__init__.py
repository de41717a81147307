"""Kestrel's local serverless platform: embedded AWS emulator, provisioning and a local Lambda runtime."""
