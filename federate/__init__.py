"""federate: Synapse homeservers that federate, provisioned with pyinfra.

In a pyinfra deploy file::

    from federate import deploy_homeservers
    deploy_homeservers()

Subpackages: `federate.deploy` (the components a deploy runs), `federate.checker` (the
federation tester, `federate check`/`verify`), `federate.pyinfra_ext` (generic pyinfra
operations and facts), `federate.lab` (disposable test hosts; needs the `lab` extra).
"""

from __future__ import annotations


def deploy_homeservers() -> None:
    """Deploy the current host's homeservers from its host data (see federate.deploy)."""
    from federate.deploy import deploy_homeservers as run

    run()
