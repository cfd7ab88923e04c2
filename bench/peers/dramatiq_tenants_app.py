"""Bare Dramatiq with a queue per tenant: the bench's bodies, consumed from N+1 queues.

Run as `dramatiq bench.peers.dramatiq_tenants_app:broker` with
`BENCH_DRAMATIQ_TENANT_QUEUES=N`: the worker declares (and Dramatiq consumes,
each with a connection and a thread, and the same for its delay queue) the
queues of N noisy tenants and of one quiet tenant, the last.  The actors are
bare Dramatiq's (`dramatiq_app`); a message names its queue when it is sent.
"""

from __future__ import annotations

import os

from bench.peers.dramatiq_app import QUEUE, broker

__all__ = ["broker", "tenant_queues"]


def tenant_queues(tenants: int) -> list[str]:
    """The queues of `tenants` noisy tenants and, last, the quiet one's.

    Named for the tenant count too: the harness's broker remembers the queues it
    declared, so a name deleted after one run and used again in the next would
    be published to without being declared again (and its messages dropped).
    """
    return [f"{QUEUE}.n{tenants}.t{i}" for i in range(tenants + 1)]


for _name in tenant_queues(int(os.environ.get("BENCH_DRAMATIQ_TENANT_QUEUES", "0") or 0)):
    broker.declare_queue(_name)
