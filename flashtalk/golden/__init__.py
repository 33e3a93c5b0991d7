"""Golden-tensor verification: our networks against outputs of the reference implementations."""
