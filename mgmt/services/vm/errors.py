"""Error codes of the VM service."""


class VmError:
    NO_HOST_AVAILABLE = "VM.NO_HOST_AVAILABLE"  # no host has the capacity, networks and storage asked
    INVALID_STATE = "VM.INVALID_STATE"  # the state table forbids the operation in the VM's state
    MIGRATION_FAILED = "VM.MIGRATION_FAILED"  # details name the step (prepare destination, migrate)
    VOLUME_IN_USE = "VOLUME.IN_USE"  # the data volume is attached to another VM
