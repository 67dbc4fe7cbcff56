"""The CLI's D-Bus marshaller against dbus-next's, an implementation we did not write:
the same bytes for the same message, and each side reads what the other wrote."""

from __future__ import annotations

import pytest
from dbus_next import Message as NextMessage
from dbus_next import MessageType
from dbus_next import Variant as NextVariant
from dbus_next._private.unmarshaller import Unmarshaller

from ferry.daemon.cli import dbuswire as wire

# (signature, our body, dbus-next's body)
BODIES = [
    ("s", ["héllo"], ["héllo"]),
    ("", [], []),
    ("ss", ["good", "B"], ["good", "B"]),
    ("b", [True], [True]),
    ("i", [-7], [-7]),
    ("sa{sv}", ["http://h/gw.swu", {"force": wire.Variant("b", True)}],
     ["http://h/gw.swu", {"force": NextVariant("b", True)}]),
    ("ha{sv}", [0, {"force": wire.Variant("b", False)}],
     [0, {"force": NextVariant("b", False)}]),
    ("sh", ["mcu", 0], ["mcu", 0]),
    ("sa{sv}as", ["org.ferry.Ferry1",
                  {"Progress": wire.Variant("(isi)", [42, "writing slot", 1]),
                   "Operation": wire.Variant("s", "installing"),
                   "Big": wire.Variant("t", 2**40), "Bytes": wire.Variant("ay", [1, 2, 3])},
                  ["LastError"]],
     ["org.ferry.Ferry1",
      {"Progress": NextVariant("(isi)", [42, "writing slot", 1]),
       "Operation": NextVariant("s", "installing"),
       "Big": NextVariant("t", 2**40), "Bytes": NextVariant("ay", b"\x01\x02\x03")},
      ["LastError"]]),
    ("a{sv}", [{}], [{}]),
    ("a(yv)ay", [[(1, wire.Variant("o", "/a/b")), (6, wire.Variant("s", "x"))], [9, 8]],
     [[[1, NextVariant("o", "/a/b")], [6, NextVariant("s", "x")]], b"\x09\x08"]),
    ("(xd)ng", [[-(2**40), 1.5], -2, "a{sv}"], [[-(2**40), 1.5], -2, "a{sv}"]),
]


def next_message(sig: str, body: list, **kw) -> NextMessage:
    return NextMessage(destination="org.ferry.Ferry1", path="/org/ferry/Ferry1",
                       interface="org.ferry.Ferry1", member="Install", signature=sig,
                       body=body, serial=7, **kw)


def ours(sig: str, body: list, **kw) -> wire.Message:
    return wire.Message(type=wire.METHOD_CALL, destination="org.ferry.Ferry1",
                        path="/org/ferry/Ferry1", interface="org.ferry.Ferry1",
                        member="Install", signature=sig, body=body, serial=7, **kw)


@pytest.mark.parametrize(("sig", "body", "nbody"), BODIES, ids=[b[0] or "empty" for b in BODIES])
def test_the_same_bytes_as_dbus_next(sig, body, nbody):
    assert wire.marshal(ours(sig, body)) == next_message(sig, nbody)._marshall()


@pytest.mark.parametrize(("sig", "body", "nbody"), BODIES, ids=[b[0] or "empty" for b in BODIES])
def test_reads_what_dbus_next_wrote(sig, body, nbody):
    data = next_message(sig, nbody)._marshall()
    assert wire.message_length(data[:16]) == len(data)
    msg = wire.unmarshal(data)
    assert (msg.type, msg.serial, msg.path, msg.member, msg.destination, msg.signature) == \
        (wire.METHOD_CALL, 7, "/org/ferry/Ferry1", "Install", "org.ferry.Ferry1", sig)
    assert wire.marshal_body(sig, msg.body) == wire.marshal_body(sig, body)


@pytest.mark.parametrize(("sig", "body", "nbody"), BODIES, ids=[b[0] or "empty" for b in BODIES])
def test_dbus_next_reads_what_we_wrote(sig, body, nbody):
    import io

    un = Unmarshaller(io.BytesIO(wire.marshal(ours(sig, body))))
    un.unmarshall()
    got = un.message
    assert got.member == "Install" and got.signature == sig and got.serial == 7
    assert got._marshall() == next_message(sig, nbody)._marshall()


def test_an_error_reply_with_fds_and_a_big_endian_message():
    err = NextMessage.new_error(next_message("s", ["x"]), "org.ferry.Ferry1.Error.Busy",
                                "an install is running")
    msg = wire.unmarshal(err._marshall())
    assert (msg.type, msg.error_name, msg.reply_serial, msg.body) == \
        (wire.ERROR, "org.ferry.Ferry1.Error.Busy", 7, ["an install is running"])
    # the UNIX_FDS header field of a call that passes one descriptor
    assert wire.marshal(ours("h", [0], unix_fds=1)) == next_message(
        "h", [0], unix_fds=[0])._marshall(negotiate_unix_fd=True)
    # a big-endian method return (dbus-daemon forwards each sender's own byte order)
    import struct
    body = struct.pack(">I", 5) + b"hello\0"
    fields = bytearray()
    fields += bytes([5, 1]) + b"u\0"  # REPLY_SERIAL, its variant signature "u"
    fields += struct.pack(">I", 3)
    fields += bytes([8, 1]) + b"g\0" + bytes([1]) + b"s\0"  # SIGNATURE
    head = b"B" + bytes([wire.METHOD_RETURN, 0, 1]) + struct.pack(">III", len(body), 9,
                                                                  len(fields))
    raw = head + fields + b"\0" * (-(len(head) + len(fields)) % 8) + body
    assert wire.message_length(raw[:16]) == len(raw)
    msg = wire.unmarshal(raw)
    assert (msg.type, msg.reply_serial, msg.body) == (wire.METHOD_RETURN, 3, ["hello"])
    assert MessageType.METHOD_RETURN.value == wire.METHOD_RETURN


@pytest.mark.parametrize("bad", [b"X" + b"\0" * 15, b"l\x01\x00\x02" + b"\0" * 12])
def test_not_a_message_is_refused(bad):
    with pytest.raises(wire.WireError):
        wire.unmarshal(bad) if bad[0] == ord("l") else wire.message_length(bad)


def test_truncated_and_oversized_messages_are_refused():
    data = next_message("s", ["hello"])._marshall()
    with pytest.raises(wire.WireError):
        wire.unmarshal(data[:-3])
    import struct
    huge = bytearray(data[:16])
    struct.pack_into("<I", huge, 4, wire.MAX_MESSAGE)
    with pytest.raises(wire.WireError, match="over the limit"):
        wire.message_length(bytes(huge))
    with pytest.raises(wire.WireError):
        wire.split_signature("a{sv")
    with pytest.raises(wire.WireError):
        wire.marshal_body("s", [])


def test_bus_addresses():
    """The first unix entry of an address list, its %XX escapes undone; none is an error."""
    from ferry.daemon.cli.dbusconn import BusError, _socket_path

    assert _socket_path("unix:path=/run/a%2cb,guid=01") == "/run/a,b"
    assert _socket_path("tcp:host=h,port=1;unix:abstract=/tmp/dbus-X") == "\0/tmp/dbus-X"
    with pytest.raises(BusError, match="unix:path"):
        _socket_path("tcp:host=h,port=1")
