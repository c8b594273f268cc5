"""Error codes of the storage service (primary and backup storage)."""


class StorageError:
    ZONE_MISMATCH = "STORAGE.ZONE_MISMATCH"  # primary storage and cluster in different zones
    URL_IN_USE = "STORAGE.URL_IN_USE"  # another storage of the same kind already uses that place
    # Adding/reconnecting a backup storage could not log in, create or write its directory.
    BACKUP_STORAGE_UNREACHABLE = "STORAGE.BACKUP_STORAGE_UNREACHABLE"
    # The SFTP server presented another host key than at the first connection.
    HOST_KEY_MISMATCH = "STORAGE.HOST_KEY_MISMATCH"
