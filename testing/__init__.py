"""The throwaway platform for the test suite and the benches (testing.platform, testing.servers) and the bench's
reference apps. Not shipped: `testing` is not among pyproject's packages."""
