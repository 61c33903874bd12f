"""The proxy as a plain ASGI app factory, for running it under another server:

    hypercorn --worker-class uvloop 'proxy.asgi:create()'
    granian --interface asgi --factory proxy.asgi:create

`python -m proxy` (granian embedded, with our draining on SIGTERM) is the supported way to run it; this entry
keeps the app server-agnostic and lets bench/proxy.py measure it on the services' server too.
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
