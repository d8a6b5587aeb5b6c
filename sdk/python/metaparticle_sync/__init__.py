"""Metaparticle Sync for Python: distributed locks and leader election for programs running in
a Kubernetes Pod annotated ``metaparticle.io/sync: "true"``, whose side-car does the work on
coordination.k8s.io/v1 Leases.

    from metaparticle_sync import Lock
    l = Lock('test')
    l.acquire()
    ...
    l.release()

    import metaparticle_sync
    metaparticle_sync.Election('test', master_fn, lost_master_fn).run()

The side-car's address is read from $METAPARTICLE_SYNC_ADDR (host:port; the injector sets it),
else 127.0.0.1:13131. Only the standard library is used. See README.md.
"""

from ._http import APIError, SidecarUnreachable, SyncError, DEFAULT_ADDRESS, ENV_ADDRESS
from .election import Election
from .lock import Lock, DEFAULT_RETRY_TIMEOUT, DEFAULT_TTL
from .version import __version__

__all__ = [
    "APIError",
    "DEFAULT_ADDRESS",
    "DEFAULT_RETRY_TIMEOUT",
    "DEFAULT_TTL",
    "ENV_ADDRESS",
    "Election",
    "Lock",
    "SidecarUnreachable",
    "SyncError",
    "__version__",
]
