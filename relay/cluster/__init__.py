"""Scale-out: any number of relay nodes on one catalogue (PostgreSQL) and one Redis.

Redis carries control only, never media: node leases, which node holds which gatherer's link
(``ownership.py``), hints between nodes (pub/sub). Commands to a gatherer linked elsewhere go to the
holding node over one command WebSocket per pair of nodes, with the cluster secret (``peers.py``,
``routes.py``, ``hub.py``).
"""

from .hub import ClusterHub
from .routes import add_routes, cluster_secret

__all__ = ["ClusterHub", "add_routes", "cluster_secret"]
