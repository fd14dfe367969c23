"""Conversations as virtual actors on Ray: behaviour (the grain) apart from hosting (the silo)."""
