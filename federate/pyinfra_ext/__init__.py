"""Generic pyinfra extensions that know nothing of Synapse or Matrix.

- `owed`: owed restarts and reloads that survive an interrupted run (pending markers);
- `files`: atomic, checked config files, owner/mode repair, secrets made once, secret uploads;
- `facts`: small facts pyinfra lacks (path exists, HTTP status seen from the host);
- `apt`: finishing an interrupted dpkg run.

Each operation asks the host first and yields nothing when it is already right, so a converged
host reports zero changes.
"""
