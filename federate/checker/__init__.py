"""The pieces of `federate check`: resolution, connection checks, client discovery, hints."""
