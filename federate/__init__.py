"""federate: provision Matrix Synapse homeservers that federate, with pyinfra."""
