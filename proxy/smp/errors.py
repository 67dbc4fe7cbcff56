"""Names for SMP error codes, so a failed flash says ``IMG_MGMT_ERR_NO_FREE_SLOT``, not 9.

A target answers an error in one of two shapes (Zephyr ``subsys/mgmt/mcumgr/smp/src/smp.c``):

- SMP v1 (all mcumgr before Zephyr 3.3, and a v2 server answering a v1 request): a
  top-level ``rc`` holding an ``MGMT_ERR_*`` code (``smp_build_err_rsp``), optionally with
  a ``rsn`` text (``CONFIG_MCUMGR_SMP_VERBOSE_ERR_RESPONSE``). A v2 server translates its
  group codes into these for v1 requests (``smp_translate_error_code`` ->
  ``img_mgmt_translate_error_code``), so v1 answers lose the detail.
- SMP v2 (Zephyr >= 3.3, request header version 1): ``err: {group, rc}`` inside the
  normal response map (``smp_add_cmd_err``), with ``rc`` from the group's own enum.
  Generic failures (unknown command, bad CBOR) still come as a top-level ``rc``.

The tables are Zephyr's: ``include/zephyr/mgmt/mcumgr/mgmt/mgmt_defines.h`` (groups,
``enum mcumgr_err_t``), ``.../grp/os_mgmt/os_mgmt.h`` (``enum os_mgmt_err_code_t``) and
``.../grp/img_mgmt/img_mgmt.h`` (``enum img_mgmt_err_code_t``). The peers test checks them
against the ``smp`` package's enums.
"""

from __future__ import annotations

GROUPS = {
    0: "os", 1: "image", 2: "stat", 3: "settings", 4: "log", 5: "crash", 6: "split",
    7: "run", 8: "fs", 9: "shell", 10: "enum", 63: "zephyr basic",
}

MGMT_ERR = {
    0: "MGMT_ERR_EOK",
    1: "MGMT_ERR_EUNKNOWN",
    2: "MGMT_ERR_ENOMEM",
    3: "MGMT_ERR_EINVAL",
    4: "MGMT_ERR_ETIMEOUT",
    5: "MGMT_ERR_ENOENT",
    6: "MGMT_ERR_EBADSTATE",
    7: "MGMT_ERR_EMSGSIZE",
    8: "MGMT_ERR_ENOTSUP",
    9: "MGMT_ERR_ECORRUPT",
    10: "MGMT_ERR_EBUSY",
    11: "MGMT_ERR_EACCESSDENIED",
    12: "MGMT_ERR_UNSUPPORTED_TOO_OLD",
    13: "MGMT_ERR_UNSUPPORTED_TOO_NEW",
}
MGMT_ERR_ENOTSUP = 8

OS_MGMT_ERR = {
    0: "OS_MGMT_ERR_OK",
    1: "OS_MGMT_ERR_UNKNOWN",
    2: "OS_MGMT_ERR_INVALID_FORMAT",
    3: "OS_MGMT_ERR_QUERY_YIELDS_NO_ANSWER",
    4: "OS_MGMT_ERR_RTC_NOT_SET",
    5: "OS_MGMT_ERR_RTC_COMMAND_FAILED",
    6: "OS_MGMT_ERR_QUERY_RESPONSE_VALUE_NOT_VALID",
    7: "OS_MGMT_ERR_HEAP_STATS_FETCH_FAILED",
}

IMG_MGMT_ERR = {n: f"IMG_MGMT_ERR_{name}" for n, name in enumerate([
    "OK", "UNKNOWN", "FLASH_CONFIG_QUERY_FAIL", "NO_IMAGE", "NO_TLVS", "INVALID_TLV",
    "TLV_MULTIPLE_HASHES_FOUND", "TLV_INVALID_SIZE", "HASH_NOT_FOUND", "NO_FREE_SLOT",
    "FLASH_OPEN_FAILED", "FLASH_READ_FAILED", "FLASH_WRITE_FAILED", "FLASH_ERASE_FAILED",
    "INVALID_SLOT", "NO_FREE_MEMORY", "FLASH_CONTEXT_ALREADY_SET", "FLASH_CONTEXT_NOT_SET",
    "FLASH_AREA_DEVICE_NULL", "INVALID_PAGE_OFFSET", "INVALID_OFFSET", "INVALID_LENGTH",
    "INVALID_IMAGE_HEADER", "INVALID_IMAGE_HEADER_MAGIC", "INVALID_HASH",
    "INVALID_FLASH_ADDRESS", "VERSION_GET_FAILED", "CURRENT_VERSION_IS_NEWER",
    "IMAGE_ALREADY_PENDING", "INVALID_IMAGE_VECTOR_TABLE", "INVALID_IMAGE_TOO_LARGE",
    "INVALID_IMAGE_DATA_OVERRUN", "IMAGE_CONFIRMATION_DENIED",
    "IMAGE_SETTING_TEST_TO_ACTIVE_DENIED", "ACTIVE_SLOT_NOT_KNOWN",
])}

GROUP_ERR = {0: OS_MGMT_ERR, 1: IMG_MGMT_ERR}


def group_name(group: int) -> str:
    if group >= 64:
        return "user"
    return GROUPS.get(group, "unknown")


def mgmt_err_name(rc: int) -> str:
    """``MGMT_ERR_*`` for an SMP v1 ``rc`` (user codes from 256 on, as Zephyr reserves)."""
    if rc >= 256:
        return f"MGMT_ERR_EPERUSER+{rc - 256}"
    return MGMT_ERR.get(rc, "unknown MGMT_ERR")


def group_err_name(group: int, rc: int) -> str:
    """The group's own enum name for an SMP v2 ``err: {group, rc}``."""
    table = GROUP_ERR.get(group)
    if table is None:
        return f"{group_name(group)} group error"
    return table.get(rc, f"unknown {group_name(group)} group error")


def describe_v1(rc: int, rsn: str = "") -> str:
    extra = f", {rsn}" if rsn else ""
    return f"{mgmt_err_name(rc)} (rc {rc}{extra})"


def describe_v2(group: int, rc: int) -> str:
    return f"{group_err_name(group, rc)} (group {group} {group_name(group)}, rc {rc})"
