"""The Kafka side: the Faust app, its topics and agents, and the clients the CLI uses."""
