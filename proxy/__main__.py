from proxy.app import create_app
from proxy.config import SERVICE_NAME, load_proxy_settings
from shared.runner import run_service

run_service(SERVICE_NAME, create_app, load_proxy_settings)
