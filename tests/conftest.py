"""Shared by the unit and lab suites.

pyinfra's CLI patches the standard library for gevent before anything else runs, and federate's
inventory loader is pyinfra's CLI code: patch first here too, so tests run in the environment the
deploy and the `federate` command run in (and nothing is patched after ssl was imported).
"""

from gevent import monkey

monkey.patch_all()
