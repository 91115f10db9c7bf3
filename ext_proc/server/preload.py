"""What the workers' zygote loads once, before it forks any worker.

``tollway serve --workers N`` starts its workers from a *zygote* (:mod:`ext_proc.server.zygote`):
one single-threaded process that forks each worker (and each restarted one). The supervisor
imports this module right before it forks the zygote, so the zygote inherits, with the compiled
policy and the policy's modules, the service and the tokenizers (the Rust BPE tables of
o200k_base and cl100k_base, ~60 MB) and the price table. Pages a worker never writes stay shared
with the zygote, the supervisor and its siblings, so N workers hold one copy instead of N
(counted as PSS). ``gc.freeze()`` moves everything loaded here out of the collector's reach: a
worker's collections would otherwise write to every object header and un-share the pages; the
memory loading freed is returned (:mod:`ext_proc.server.memory`) before any worker is forked.
"""

from __future__ import annotations

import gc

import ext_proc.server.worker  # noqa: F401 - the service's modules, imported once for every worker
from ext_proc.server.accounting import warm_up
from ext_proc.server.app import dump_stacks_on_signal
from ext_proc.server.memory import give_back

dump_stacks_on_signal()  # the zygote too (inherited): a stack dump of the tree must not kill it
warm_up()
gc.collect()
gc.freeze()
give_back()  # what loading freed goes back to the system before the workers share the pages
