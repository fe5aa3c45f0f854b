# The deploy file `federate drift` runs (package data; the same two lines as a user's deploy.py).
from federate import deploy_homeservers
deploy_homeservers()
