"""The recovery lab: local stand-ins for a provider's token endpoint and mail API, and the scenarios."""
