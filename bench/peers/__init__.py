"""The peers Taskyard is measured against, each running the same job bodies (bench.bodies)."""
