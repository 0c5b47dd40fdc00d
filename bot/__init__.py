"""supportbot: customer-service chatbots grounded in a site's own FAQ and help documents."""

__version__ = "0.1.0"
