"""Local stand-ins for the model providers' HTTP APIs, driven by the real SDK clients in the tests."""
