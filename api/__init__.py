"""The HTTP front end (FastAPI on uvicorn) and the ``convoy`` command line."""
