"""pydantic models for every boundary: HTTP bodies, Redis payloads, Ray messages."""
