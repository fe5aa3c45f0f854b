from federate import deploy_homeservers
deploy_homeservers()
