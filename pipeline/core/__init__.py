"""What every other subpackage may use and nothing else provides: the error types, the
params schema (dataclasses <-> YAML, field docs), atomic file writes, storage URIs, Ray
start-up on loopback and the DDP collectives. It imports no other pipeline subpackage."""
