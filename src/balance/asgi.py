"""`balance.asgi:app`: the application configured from the environment, for ASGI servers."""

from balance.bootstrap import build_app
from balance.config import Settings

app = build_app(Settings.from_env())
