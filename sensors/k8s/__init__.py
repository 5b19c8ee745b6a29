"""Pod and container metadata from the Kubernetes API: owner chains, service accounts, IPs, container ids."""

from sensors.k8s.cache import PodCache, PodInfo
from sensors.k8s.watcher import PodWatcher, build_api_client

__all__ = ["PodCache", "PodInfo", "PodWatcher", "build_api_client"]
