"""Stand-ins for the API endpoints of the clusters booted on the devcloud (issues 17 and 12).

A real node runs what its user data tells it to; the devcloud plays that part for what a user connects to: once a
cluster's first master is ACTIVE, it serves what the COE's endpoint would serve at every address it is reached at
(each ACTIVE node's fixed and floating IPs, a load balancer's VIP and floating IPs while its listener routes to an
ACTIVE master). Everything comes from the servers' user data (the CA, certificates and keys it writes, the
environment file's facts), never from Cove.

- ``userdata.py``: what a node's user data says;
- ``plan.py``: which endpoints the cloud's state calls for (shared by every COE);
- ``base.py``: what a COE's stand-in is made of; ``reconciler.py``: binds and unbinds on every ledger change;
- ``kubernetes.py`` (kube-apiserver), ``swarm.py`` (the Docker engines), ``mesos.py`` (Marathon, the Mesos master).
"""

from deploy.devcloud.coe.reconciler import serve

__all__ = ["serve"]
