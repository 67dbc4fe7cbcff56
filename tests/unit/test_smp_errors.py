"""SMP error replies in both shapes (v1 ``rc``, v2 ``err: {group, rc}``), named from
Zephyr's enums, parsed from packets and end to end against the simulated MCU."""

from __future__ import annotations

import pytest
from smp_helpers import NEW, OLD, flash, mcu_image, running_sim, running_version

from ferry.proxy.smp import errors
from ferry.proxy.smp.client import SmpClient
from ferry.proxy.smp.header import IMAGE_STATE, PARAMS, Header, Op
from ferry.proxy.smp.smp import Packet, SmpError, check
from ferry.sim.mcu import image as sim_image


def packet(body: dict[str, object], group: int = 1) -> Packet:
    return Packet(Header(op=Op.WRITE_RSP, length=0, group=group, seq=0, command=1), body)


@pytest.mark.parametrize(("body", "group", "text", "rc", "err_group"), [
    ({"err": {"group": 1, "rc": 9}}, 1,
     "IMG_MGMT_ERR_NO_FREE_SLOT (group 1 image, rc 9)", 9, 1),
    ({"err": {"group": 0, "rc": 3}}, 0,
     "OS_MGMT_ERR_QUERY_YIELDS_NO_ANSWER (group 0 os, rc 3)", 3, 0),
    ({"err": {"group": 64, "rc": 2}}, 64, "user group error (group 64 user, rc 2)", 2, 64),
    ({"err": {"group": 1, "rc": 99}}, 1, "unknown image group error (group 1 image, rc 99)",
     99, 1),
    ({"rc": 6, "rsn": "img pending"}, 1, "MGMT_ERR_EBADSTATE (rc 6, img pending)", 6, None),
    ({"rc": 8}, 0, "MGMT_ERR_ENOTSUP (rc 8)", 8, None),
    ({"rc": 300}, 0, "MGMT_ERR_EPERUSER+44 (rc 300)", 300, None),
])
def test_error_shapes_are_named(body: dict[str, object], group: int, text: str, rc: int,
                                err_group: int | None) -> None:
    with pytest.raises(SmpError) as err:
        check(packet(body, group), "image upload")
    assert str(err.value) == f"image upload: target answered {text}"
    assert err.value.rc == rc and err.value.group == err_group


@pytest.mark.parametrize("body", [{"off": 5}, {"rc": 0, "off": 5},
                                  {"err": {"group": 1, "rc": 0}, "off": 5}])
def test_success_shapes(body: dict[str, object]) -> None:
    assert check(packet(body), "image upload")["off"] == 5


def test_names_follow_zephyr_enums() -> None:
    assert errors.MGMT_ERR[13] == "MGMT_ERR_UNSUPPORTED_TOO_NEW"
    assert errors.IMG_MGMT_ERR[28] == "IMG_MGMT_ERR_IMAGE_ALREADY_PENDING"
    assert errors.IMG_MGMT_ERR[33] == "IMG_MGMT_ERR_IMAGE_SETTING_TEST_TO_ACTIVE_DENIED"
    assert errors.OS_MGMT_ERR[3] == "OS_MGMT_ERR_QUERY_YIELDS_NO_ANSWER"


def stage_other(sim_port: str) -> None:
    """Leave a different image pending in slot 1 (another tool's half-done update)."""
    other = mcu_image((1, 0, 5, 0), 3000, seed=9)
    info = sim_image.inspect(other)
    assert info is not None
    with SmpClient(sim_port, timeout=2) as c:
        c.upload(other)
        c.set_state(info.hash, confirm=False)


@pytest.mark.parametrize(("sim_v2", "client_v2", "name"), [
    (True, True, "IMG_MGMT_ERR_NO_FREE_SLOT (group 1 image, rc 9)"),
    (True, False, "MGMT_ERR_EBADSTATE (rc 6)"),  # img_mgmt_translate_error_code
    (False, True, "MGMT_ERR_EBADSTATE (rc 6)"),  # a server older than Zephyr 3.3
    (False, False, "MGMT_ERR_EBADSTATE (rc 6)"),
])
def test_upload_into_a_pending_slot_is_refused_by_name(sim_v2: bool, client_v2: bool,
                                                       name: str) -> None:
    with running_sim(smp_v2=sim_v2) as sim:
        stage_other(sim.port)
        version = 1 if client_v2 else 0
        with SmpClient(sim.port, timeout=2, smp_version=version) as c, \
                pytest.raises(SmpError) as err:
            c.upload(NEW)
        assert str(err.value).endswith(name)
        assert sim.device.secondary.magic  # the pending image is untouched


def test_flash_reports_the_named_error_and_changes_nothing() -> None:
    with running_sim() as sim:
        stage_other(sim.port)
        with pytest.raises(SmpError, match="IMG_MGMT_ERR_NO_FREE_SLOT"):
            flash(sim)
        assert running_version(sim) == "1.0.0"


@pytest.mark.parametrize(("body", "name"), [
    ({"confirm": False, "hash": sim_image.inspect(OLD).hash},  # type: ignore[union-attr]
     "IMG_MGMT_ERR_IMAGE_SETTING_TEST_TO_ACTIVE_DENIED"),
    ({"confirm": False}, "IMG_MGMT_ERR_INVALID_HASH"),
    ({"confirm": False, "hash": bytes(32)}, "IMG_MGMT_ERR_HASH_NOT_FOUND"),
    ({"confirm": True}, "IMG_MGMT_ERR_IMAGE_ALREADY_PENDING"),  # confirm while a test waits
])
def test_state_write_refusals_as_zephyr(body: dict[str, object], name: str) -> None:
    with running_sim() as sim:
        stage_other(sim.port)
        with SmpClient(sim.port, timeout=2) as c, pytest.raises(SmpError, match=name):
            c.request(Op.WRITE, IMAGE_STATE, body, "image state write", retries=0)


@pytest.mark.parametrize("smp_v2", [True, False], ids=["v2", "v1"])
def test_no_params_answers_enotsup_and_the_upload_still_works(smp_v2: bool) -> None:
    with running_sim(supports_params=False, smp_v2=smp_v2) as sim, \
            SmpClient(sim.port, timeout=1) as c:
        with pytest.raises(SmpError, match=r"MGMT_ERR_ENOTSUP \(rc 8\)"):
            c.request(Op.READ, PARAMS, {}, "MCUmgr params", retries=0)
        params = c.read_params()
        assert not params.advertised and (params.buf_size, params.buf_count) == (384, 1)
        c.upload(NEW)
        assert sim.device.secondary.data == NEW
