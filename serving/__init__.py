"""Online serving: the Flask app (one deployment per model) under gunicorn, and the async worker."""

from importlib.metadata import PackageNotFoundError, version

# The platform's name and version, answered at Open Inference's /v2 by the replicas and by the gateway alike
# (stack/gateway.py reads them here: this module imports nothing heavy).
SERVER_NAME = "model-serving-platform"
try:
    SERVER_VERSION = version(SERVER_NAME)
except PackageNotFoundError:  # a checkout that was never pip-installed
    SERVER_VERSION = "0.1.0"
