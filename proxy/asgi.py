"""The proxy as a plain ASGI app factory, for servers other than our hypercorn runner.

    granian --interface asgi --factory proxy.asgi:create

hypercorn through `python -m proxy` remains the supported way to run it (it drains on SIGTERM); this entry
exists so the choice of server can be measured (bench/proxy.py) and made on numbers.
"""

from proxy.app import ProxyDispatch, create_app
from proxy.config import SERVICE_NAME, load_proxy_settings
from shared.log import configure_logging
from shared.runner import tune_gc


def create() -> ProxyDispatch:
    settings = load_proxy_settings()
    configure_logging(SERVICE_NAME, settings.log_level)
    app = create_app(settings)
    tune_gc()
    return app
