from proxy.app import create_app
from proxy.config import SERVICE_NAME, load_proxy_settings
from shared.runner import run_service, serve_granian

# granian rather than the services' hypercorn: 1.7x the throughput in bench/proxy.py (docs/benchmarks.md).
run_service(SERVICE_NAME, create_app, load_proxy_settings, server=serve_granian)
