"""The ``convoy`` command (``main``): the composition root that starts Redis, Ray, the hosts and
the API (``serve``, ``api``), manages API keys against the store (``keys``), talks to a server over
HTTP only (``chat``), and adds ``convoy bench``. It depends on every other room; none depends on it.
"""
