"""The local stack: project-local services for `make up` and throwaway ones for the test suite."""
