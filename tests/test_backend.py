"""services/common/backend.py: what every driver's backend shares."""

from __future__ import annotations

import libvirt
import pytest

from services.common.backend import list_flags, summaries


def test_a_listed_object_that_went_away_is_left_out() -> None:
    conn = libvirt.open("test:///default")
    try:
        gone = conn.createXML("<domain type='test'><name>gone</name><memory>1024</memory>"
                              "<os><type>hvm</type></os></domain>")
        listed = conn.listAllDomains(0)
        gone.destroy()  # transient: it no longer exists, but the list still holds it
        assert "gone" in [dom.name() for dom in listed]
        assert "gone" not in [info[0] for info in summaries(
            listed, lambda dom: (dom.name(), dom.info()))]
    finally:
        conn.close()


def test_other_errors_still_fail_the_list() -> None:
    def broken(_obj: object) -> None:
        raise libvirt.libvirtError("internal error: broken")

    with pytest.raises(libvirt.libvirtError):
        summaries([object()], broken)


def test_list_flags() -> None:
    assert list_flags((None, 1, 2), (True, 4, 8), (False, 16, 32)) == 4 | 32
