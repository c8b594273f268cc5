"""The KVM host agent: serves the agent protocol (``schema.agent``) for one host with libvirt.

Modules: ``config`` (file + ``RINGSTACK_*`` environment), ``hypervisor`` (the libvirt connection,
its thread pool and lifecycle events), ``domxml`` (domain XML from a ``VmSpec``), ``vms`` (domain
operations), ``storage`` (volumes on local and NFS primary storage), ``network`` (Linux bridges),
``agent`` (one coroutine per protocol command, state reports), ``bus`` (the least-privilege bus),
``bundle`` (the install bundle the management node ships to hosts), ``__main__`` (the daemon).
"""
