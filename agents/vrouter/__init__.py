"""The virtual-router agent: serves ``schema.vrouter`` inside a VR appliance (or a namespace).

Modules: ``config`` (file + ``RINGSTACK_*`` environment), ``rules`` (iptables rules rendered from
the desired state, diffed, restored per table), ``dhcp`` (dnsmasq, reloaded by SIGHUP), ``proc``
(argv-only subprocesses, counted), ``agent`` (one coroutine per command), ``__main__`` (the daemon).
"""
