"""Test fixtures for the container deployment: a Docker engine, stand-in base images when no registry answers,
a pip wheelhouse for air-gapped builds, and one deployment brought up from a generated `.env`."""
