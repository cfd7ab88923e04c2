"""The RabbitMQ transport: the broker, its screening consumer, the publisher, queue administration.

Kept apart from `middleware/` (what every message gets) and `services/` (the
logic): everything here speaks AMQP.
"""
