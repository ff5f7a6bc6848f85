"""The local all-in-one stack: the `bookfeed` CLI, `bookfeed up`, embedded servers, the live view and the one
process harness. May import every other package; none imports it (bench/ and tests/ aside)."""
