"""Test doubles that speak real wire protocols (no monkeypatching)."""
