"""Online serving: the Flask app (one deployment per model) under gunicorn, and the async worker."""
