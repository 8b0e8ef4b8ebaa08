"""The gifting service."""
