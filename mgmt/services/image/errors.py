"""Error codes of the image service.

The first four are error replies. The others name why an import ended in ``Error``: the image's
``statusReason`` starts with the code (``IMAGE.CHECKSUM_MISMATCH: ...``).
"""


class ImageError:
    URL_NOT_ALLOWED = "IMAGE.URL_NOT_ALLOWED"  # file:// for a normal account
    BACKUP_STORAGE_NOT_AVAILABLE = "IMAGE.BACKUP_STORAGE_NOT_AVAILABLE"  # disabled or disconnected
    INVALID_STATUS = "IMAGE.INVALID_STATUS"  # e.g. expunging an image that is not Deleted
    EXPUNGE_FAILED = "IMAGE.EXPUNGE_FAILED"  # a copy could not be removed; nothing was changed

    SOURCE_UNREACHABLE = "IMAGE.SOURCE_UNREACHABLE"  # cannot open/read the URL (404, refused, no file)
    TOO_LARGE = "IMAGE.TOO_LARGE"  # over the size limit or the backup storage's free capacity
    CHECKSUM_MISMATCH = "IMAGE.CHECKSUM_MISMATCH"
    FORMAT_MISMATCH = "IMAGE.FORMAT_MISMATCH"  # the bytes are not what ``format`` says
    DOWNLOAD_INTERRUPTED = "IMAGE.DOWNLOAD_INTERRUPTED"  # cancelled (deleted, node stopping)
    STORE_FAILED = "IMAGE.STORE_FAILED"  # writing to the backup storage failed
