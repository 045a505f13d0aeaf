"""`balance.asgi:app`: the application configured from the environment, for ASGI servers, with
the relay and the consumers ``balance-service run`` starts beside it (``server.WithConsumers``)."""

from balance.bootstrap import build_app
from balance.config import Settings
from balance.server import WithConsumers

settings = Settings.from_env()
app = WithConsumers(build_app(settings), settings)
